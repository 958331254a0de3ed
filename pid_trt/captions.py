"""Prompt -> caption embedding for a decoder: the caption encoder's lifecycle and a bounded
cache of the embeddings it computed.

:class:`CaptionProvider` is what :class:`pid_trt.Decoder` (and so ``pidtrt decode --prompt``,
the diffusers integration and ``pidtrt serve``) asks for embeddings. It loads the caption
encoder (:class:`pid_trt.text.CaptionEncoder`, Gemma-2-2B-it) on the first prompt it has
not seen, keeps it resident or frees it after each use, and keeps up to ``max_entries``
embeddings [T, D] float32 (least recently used dropped first), keyed by

- the prompt text, exactly as given (no normalisation: "a fox" and "a fox " are two prompts);
- the text encoder's identity (:meth:`CaptionProvider.identity`): its directory, a digest of
  the names, sizes and modification times of the files in it, the ``text_dtype`` option and
  the device. Another encoder, or the same directory with new weights, never gets an
  embedding the first one computed.

A prompt found in the cache does not run (or load) the encoder: the embedding returned is
the one computed when the prompt was first seen, bit for bit. (An encoder run on several
prompts at once may round a row differently, ~1e-7, from the same prompt encoded alone, as
any batched matrix product; a cached row is whichever of those was computed first.)

Sizes: one Gemma-2-2B embedding is 300 x 2304 float32 = 2.76 MB, so ``max_entries=32``
(:data:`DEFAULT_CAPTION_CACHE`) holds at most 88 MB of CPU memory; ``max_entries=0`` turns the
cache off (every prompt runs the encoder, as before the cache existed).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pid_trt.caption_store import CaptionStore, encoder_digest
from pid_trt.errors import ConfigError
from pid_trt.text import TEXT_ENCODER_ENV

__all__ = ["DEFAULT_CAPTION_CACHE", "TEXT_ENCODER_ENV", "CacheStats", "CaptionCache", "CaptionProvider"]

#: Embeddings a provider keeps by default (Gemma-2-2B: 2.76 MB each).
DEFAULT_CAPTION_CACHE = 32


@dataclass(frozen=True)
class CacheStats:
    """Counters of a caption cache since it was made.

    hits: prompt rows answered without running the encoder (found in the cache, or a
    repeat of another row of the same call); misses: rows the encoder computed; entries /
    max_entries: embeddings held now / at most; bytes: their size.
    """

    hits: int
    misses: int
    entries: int
    max_entries: int
    bytes: int

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses); 0.0 before the first lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class CaptionCache:
    """A bounded, thread-safe, least-recently-used map (prompt, encoder identity) -> [T, D]
    float32 CPU tensor, with hit / miss counters. ``max_entries`` >= 0 (0: holds nothing)."""

    def __init__(self, max_entries: int = DEFAULT_CAPTION_CACHE) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise ConfigError(f"caption_cache={max_entries!r}: expected an integer >= 0 (0: no cache)")
        self.max_entries = max_entries
        self._items: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def get(self, prompt: str, identity: str) -> torch.Tensor | None:
        """The embedding of ``prompt`` by encoder ``identity``, marked most recently used;
        None when absent. Counts nothing (see :meth:`count`)."""
        with self._lock:
            emb = self._items.get((prompt, identity))
            if emb is not None:
                self._items.move_to_end((prompt, identity))
            return emb

    def put(self, prompt: str, identity: str, embedding: torch.Tensor) -> None:
        """Keep ``embedding`` [T, D] (a private copy), dropping the least recently used beyond
        ``max_entries``."""
        if self.max_entries == 0:
            return
        value = embedding.detach().to("cpu", torch.float32).clone()
        with self._lock:
            self._items[(prompt, identity)] = value
            self._items.move_to_end((prompt, identity))
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def count(self, hits: int, misses: int) -> None:
        with self._lock:
            self._hits += hits
            self._misses += misses

    def clear(self) -> None:
        """Drop every embedding (the counters stay)."""
        with self._lock:
            self._items.clear()

    def stats(self) -> CacheStats:
        with self._lock:
            size = sum(t.numel() * t.element_size() for t in self._items.values())
            return CacheStats(self._hits, self._misses, len(self._items), self.max_entries, size)


class CaptionProvider:
    """Caption embeddings for prompts, by a caption encoder loaded on demand, through a
    :class:`CaptionCache` (see the module docstring).

    source: a local Gemma-2-2B-it directory, a loaded :class:`pid_trt.text.CaptionEncoder`,
    or None ($PIDTRT_TEXT_ENCODER, read when an encoder is needed). device: where the encoder
    runs (cpu | cuda[:n]); dtype: fp32 | bf16 | None (the encoder's default for the device).
    keep: keep the encoder loaded between calls (None: kept on the CPU, freed after each
    call on a GPU, so the decode has the memory). max_entries: the cache's bound (0: off).
    store: the persistent caption store behind the cache (:mod:`pid_trt.caption_store`;
    None: none): a prompt found there does not load the encoder, one encoded is written there.
    Thread-safe: encoder runs are serialised; cache hits need neither the lock nor the encoder.
    """

    def __init__(
        self,
        source: Any = None,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        keep: bool | None = None,
        max_entries: int = DEFAULT_CAPTION_CACHE,
        store: CaptionStore | None = None,
    ) -> None:
        self.cache = CaptionCache(max_entries)
        self.store = store
        #: Prompt rows answered by the persistent store / computed by the encoder, since made.
        self.store_hits = 0
        self.encoder_runs = 0
        self._source = source
        self._device = str(device)
        self._dtype = dtype
        self._keep = keep
        self._encoder: Any = None  # the loaded CaptionEncoder, when resident
        self._encoder_identity: str | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def available(self) -> bool:
        """Whether a prompt can be encoded: an encoder was given (or is loaded), or
        $PIDTRT_TEXT_ENCODER names one."""
        return self._source is not None or self._encoder is not None or bool(os.environ.get(TEXT_ENCODER_ENV))

    def stats(self) -> CacheStats:
        return self.cache.stats()

    @property
    def dtype(self) -> str:
        """The dtype the encoder runs in: the one asked for, else bf16 on cuda, fp32 on the CPU."""
        return self._dtype or ("bf16" if self._device.startswith("cuda") else "fp32")

    def identity(self) -> str:
        """The identity of the encoder that would answer now (the loaded one, else the one
        its source names), without loading it: ``DIR@DIGEST:DTYPE:DEVICE``. Raises
        ConfigError when no encoder is named or the directory is not a text encoder's."""
        encoder = self._encoder
        if encoder is not None and self._encoder_identity is not None:
            return self._encoder_identity
        from pid_trt.text import CaptionEncoder, resolve_text_encoder_source

        source = self._source
        if isinstance(source, CaptionEncoder):
            if not source.source:  # built by hand from a model object: this object is the identity
                return f"<CaptionEncoder {id(source):x}>:{source.dtype}:{source.device}"
            return _identity(Path(source.source), source.dtype, str(source.device))
        return _identity(resolve_text_encoder_source(self._named_source()), self._dtype, self._device)

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Embeddings [N, T, D] float32 on the CPU, row i for ``prompts[i]`` (strings; ""
        allowed). Rows found in the cache, then in the persistent store, skip the encoder;
        the others (each distinct prompt once) run it in one call, are cached and stored."""
        return self.encode_traced(prompts)[0]

    def encode_traced(self, prompts: Sequence[str]) -> tuple[torch.Tensor, bool]:
        """(:meth:`encode`'s embeddings, whether the encoder ran for them)."""
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ConfigError("prompt: expected a string or a non-empty list of strings")
        self._check_open()
        if self.cache.max_entries == 0 and self.store is None:
            with self._lock:
                self._check_open()
                emb = self._run(prompts)[1]
            self.cache.count(0, len(prompts))
            self.encoder_runs += len(prompts)
            return emb.float().cpu(), True
        identity = self.identity()
        found = {p: e for p in dict.fromkeys(prompts) if (e := self.cache.get(p, identity)) is not None}
        missing = [p for p in dict.fromkeys(prompts) if p not in found]
        stored = self._from_store(missing)
        for prompt, row in stored.items():
            self.cache.put(prompt, identity, row)
            found[prompt] = row
        missing = [p for p in missing if p not in stored]
        if missing:
            with self._lock:
                self._check_open()
                identity, emb = self._run(missing)
            key = self._store_key()
            for prompt, row in zip(missing, emb, strict=True):
                self.cache.put(prompt, identity, row)
                if key is not None and self.store is not None:
                    self.store.put(*key, prompt, row)
                found[prompt] = row
        self.cache.count(len(prompts) - len(missing), len(missing))
        self.encoder_runs += len(missing)
        return torch.stack([found[p] for p in prompts]).float().cpu(), bool(missing)

    def stored_null(self, width: int) -> tuple[torch.Tensor, str] | None:
        """A null caption [T, D] (the encoding of "") found without running an encoder, and
        where from: the configured encoder's entry in the persistent store, or (no encoder
        configured) any stored null caption of width ``width``; None when there is none."""
        if self.store is None:
            return None
        if self.available:
            row = self._from_store([""]).get("")
            return None if row is None else (row, str(self.store.path(*self._store_key(), "")))  # type: ignore[misc]
        found = self.store.any_null(width)
        return None if found is None else (found[0], str(found[1]))

    def _store_key(self) -> tuple[str, str] | None:
        """(encoder digest, dtype) of the encoder that would answer, for the persistent
        store; None when there is no store or the encoder has no folder (built by hand)."""
        if self.store is None:
            return None
        from pid_trt.text import CaptionEncoder, resolve_text_encoder_source

        source = self._encoder if self._encoder is not None else self._source
        if isinstance(source, CaptionEncoder):
            return (encoder_digest(source.source), source.dtype) if source.source else None
        return encoder_digest(resolve_text_encoder_source(self._named_source())), self.dtype

    def _from_store(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        key = self._store_key() if prompts else None
        if key is None or self.store is None:
            return {}
        out = {p: row for p in prompts if (row := self.store.get(*key, p)) is not None}
        self.store_hits += len(out)
        return out

    def free(self) -> None:
        """Free the encoder and the cached embeddings; later calls raise ConfigError. Idempotent."""
        with self._lock:
            self._closed = True
            self._release()
        self.cache.clear()

    close = free

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError("this caption provider is closed (its Decoder was closed): load a new one")

    def _named_source(self) -> str | os.PathLike[str]:
        source = self._source
        if source is None:
            source = os.environ.get(TEXT_ENCODER_ENV)
            if not source:
                raise ConfigError(
                    "a prompt needs the caption encoder: pass text_encoder=DIR (CLI: --text-encoder DIR) "
                    f"or set {TEXT_ENCODER_ENV} to a local Gemma-2-2B-it directory "
                    "(see README, 'Caption embeddings')"
                )
        return source

    def _run(self, prompts: list[str]) -> tuple[str, torch.Tensor]:
        """(identity, [N, T, D]) by the encoder, loaded if needed; freed after unless kept.
        Call with ``self._lock`` held."""
        encoder = self._load()
        try:
            return self._encoder_identity or "", encoder.encode(prompts)
        finally:
            if not self._keep_resident():
                self._release()

    def _load(self) -> Any:
        if self._encoder is not None:
            return self._encoder
        from pid_trt.text import CaptionEncoder

        identity = self.identity()
        source = self._source
        if isinstance(source, CaptionEncoder):
            self._encoder = source
        else:
            self._encoder = CaptionEncoder.load(self._named_source(), device=self._device, dtype=self._dtype)
        self._encoder_identity = identity
        return self._encoder

    def _release(self) -> None:
        if self._encoder is not None:
            self._encoder.free()
        self._encoder = None
        self._encoder_identity = None

    def _keep_resident(self) -> bool:
        if self._keep is not None:
            return self._keep
        return not self._device.startswith("cuda")


def _identity(path: Path, dtype: str | None, device: str) -> str:
    """``DIR@DIGEST:DTYPE:DEVICE``; DIGEST: sha256 (12 hex) of the (name, size, mtime_ns) of
    every file in DIR, so new weights in the same directory are another encoder."""
    digest = hashlib.sha256()
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        entries = []
    for entry in entries:
        try:
            if entry.is_file():
                st = entry.stat()
                digest.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            continue
    return f"{path.resolve()}@{digest.hexdigest()[:12]}:{dtype or 'default'}:{device}"
