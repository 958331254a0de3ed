"""The persistent caption store: caption embeddings on disk, shared by processes and ranks.

A prompt encoded once is never encoded again on this machine: :class:`CaptionStore` keeps
each embedding [T, D] float32 in its own safetensors file under the store's folder
(``--caption-store DIR``, ``$PIDTRT_CAPTION_STORE``; default ``$XDG_CACHE_HOME/pid-trt/captions``,
else ``~/.cache/pid-trt/captions``), named by the SHA-256 of its key:

- the encoder's identity (:func:`encoder_digest`): the names, sizes and SHA-256 of its
  ``config.json`` and tokenizer files, and of each weight file the size, its safetensors
  header and 17 blocks of 64 KiB spread over the file (first and last included): the same
  weights in another folder are the same encoder; other weights are another one;
- the recipe (:func:`recipe`: the instruction prompt's digest and the kept length);
- the dtype the encoder ran in (fp32 | bf16);
- the prompt, exactly as given ("" is the null caption: its files are named ``null-*``).

Concurrency: a file is written to a temp name and renamed into place (:mod:`pid_trt.atomic`),
so a reader sees a whole file or none; a file that vanishes while it is read (another
process's eviction) is a miss. Size: after each write the oldest files (by modification
time; a hit touches its file) go until the folder is under ``max_mb``.
One Gemma-2-2B embedding is 300 x 2304 float32 = 2.76 MB: the default 1024 MB holds ~370.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pid_trt.atomic import TEMP_PREFIX, atomic_write
from pid_trt.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where a tensor is read or written: the folder rule stays light
    import torch

__all__ = [
    "CAPTION_STORE_ENV",
    "DEFAULT_STORE_MB",
    "CaptionStore",
    "default_store_dir",
    "encoder_digest",
    "recipe",
]

#: Environment variable naming the store's folder ("off": no store).
CAPTION_STORE_ENV = "PIDTRT_CAPTION_STORE"
#: Default bound of the store's size in MB.
DEFAULT_STORE_MB = 1024.0
_KEY = "caption_embedding"
_BLOCK = 64 * 1024
_BLOCKS = 16
_SMALL_FILES = ("config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                "special_tokens_map.json", "generation_config.json")  # fmt: skip
_digests: dict[tuple, str] = {}
_digests_lock = threading.Lock()


@functools.cache
def recipe() -> str:
    """The caption recipe's version: another instruction prompt or length is another recipe."""
    from pid_trt.text import INSTRUCTION_PROMPT, MAX_LENGTH

    return f"pid-caption-v1:{hashlib.sha256(INSTRUCTION_PROMPT.encode()).hexdigest()[:16]}:{MAX_LENGTH}"


def default_store_dir() -> Path | None:
    """$PIDTRT_CAPTION_STORE (None when "off"), else the user's cache folder's ``pid-trt/captions``."""
    named = os.environ.get(CAPTION_STORE_ENV)
    if named:
        return None if named.strip().lower() == "off" else Path(named).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "pid-trt" / "captions"


def _sampled_sha(path: Path, size: int) -> str:
    """SHA-256 of a weight file's safetensors header (when it has one) and of 17 blocks
    spread evenly over it: cheap for a 5 GB file, yet any retrained weights differ."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(8)
        digest.update(head)
        if len(head) == 8:
            n = int.from_bytes(head, "little")
            if 0 < n <= min(size - 8, 100 << 20):
                digest.update(f.read(n))
        for i in range(_BLOCKS + 1):
            f.seek(max(0, (size - _BLOCK) * i // _BLOCKS))
            digest.update(f.read(_BLOCK))
    return digest.hexdigest()


def encoder_digest(directory: str | os.PathLike[str]) -> str:
    """The identity (24 hex) of the text encoder in ``directory`` by content, not path (see the
    module docstring). Memoised per process by the files' (name, size, mtime)."""
    root = Path(directory)
    try:
        entries = sorted((e for e in os.scandir(root) if e.is_file()), key=lambda e: e.name)
        stamp = tuple((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries)
    except OSError as exc:
        raise ConfigError(f"text encoder {root}: cannot list it ({exc})") from None
    key = (str(root.resolve()), stamp)
    with _digests_lock:
        if key in _digests:
            return _digests[key]
    digest = hashlib.sha256()
    try:
        for name, size, _ in stamp:
            path = root / name
            if name in _SMALL_FILES:
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            elif name.endswith(".safetensors"):
                content = _sampled_sha(path, size)
            else:
                continue
            digest.update(f"{name}\0{size}\0{content}\n".encode())
    except OSError as exc:
        raise ConfigError(f"text encoder {root}: cannot read its files ({exc})") from None
    value = digest.hexdigest()[:24]
    with _digests_lock:
        _digests[key] = value
    return value


@dataclass(frozen=True)
class CaptionStore:
    """A folder of caption embeddings (see the module docstring). ``max_mb`` > 0."""

    root: Path
    max_mb: float = DEFAULT_STORE_MB

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser())
        if isinstance(self.max_mb, bool) or not isinstance(self.max_mb, (int, float)) or not self.max_mb > 0:
            raise ConfigError(f"caption store size {self.max_mb!r} MB: expected a number > 0")

    @classmethod
    def default(
        cls, root: str | os.PathLike[str] | None = None, max_mb: float | None = None
    ) -> CaptionStore | None:
        """The store at ``root``, else the default folder (:func:`default_store_dir`); None when off."""
        folder = Path(root).expanduser() if root is not None else default_store_dir()
        if folder is None:
            return None
        return cls(folder, DEFAULT_STORE_MB if max_mb is None else max_mb)

    def path(self, encoder: str, dtype: str, prompt: str) -> Path:
        """The file of (encoder digest, dtype, prompt) under the current :func:`recipe`."""
        key = json.dumps([recipe(), encoder, dtype, prompt], ensure_ascii=False)
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        return self.root / f"{'null' if prompt == '' else 'cap'}-{name}.safetensors"

    def get(self, encoder: str, dtype: str, prompt: str) -> torch.Tensor | None:
        """The stored [T, D] float32 embedding, or None (absent, vanished, unreadable, or a
        hash collision of another key)."""
        path = self.path(encoder, dtype, prompt)
        found = _read(path)
        if found is None:
            return None
        emb, meta = found
        if meta.get("prompt") != prompt or meta.get("encoder") != encoder or meta.get("dtype") != dtype:
            return None
        _touch(path)
        return emb

    def any_null(self, width: int) -> tuple[torch.Tensor, Path] | None:
        """The most recently used null caption (prompt "") of this recipe and width ``width``,
        whatever encoder made it: ([T, D], its file), or None."""
        try:
            files = sorted(self.root.glob("null-*.safetensors"), key=_mtime, reverse=True)
        except OSError:
            return None
        for path in files:
            found = _read(path)
            if found is None:
                continue
            emb, meta = found
            if meta.get("recipe") == recipe() and meta.get("prompt") == "" and int(emb.shape[-1]) == width:
                _touch(path)
                return emb, path
        return None

    def put(self, encoder: str, dtype: str, prompt: str, embedding: torch.Tensor) -> Path | None:
        """Store ``embedding`` [T, D] atomically, then trim the folder to ``max_mb``; returns
        its file (None when the folder cannot be written: the store is a cache, not a need)."""
        from safetensors.torch import save_file

        path = self.path(encoder, dtype, prompt)
        meta = {"recipe": recipe(), "encoder": encoder, "dtype": dtype, "prompt": prompt}
        import torch

        tensor = embedding.detach().to("cpu", torch.float32).contiguous()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as tmp:
                save_file({_KEY: tensor}, os.fspath(tmp), metadata=meta)
        except OSError:
            return None
        self.trim()
        return path

    def trim(self) -> None:
        """Remove the oldest files until the folder holds at most ``max_mb``."""
        try:
            files = [
                (p, p.stat()) for p in self.root.glob("*.safetensors") if not p.name.startswith(TEMP_PREFIX)
            ]
        except OSError:
            return
        total = sum(st.st_size for _, st in files)
        limit = self.max_mb * 1e6
        for path, st in sorted(files, key=lambda f: f[1].st_mtime_ns):
            if total <= limit:
                break
            path.unlink(missing_ok=True)
            total -= st.st_size

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*.safetensors") if p.is_file())


def _read(path: Path) -> tuple[torch.Tensor, dict[str, str]] | None:
    """(embedding [T, D] float32, metadata) of a store file; None when it is absent, gone
    half-way, or not one of the store's files."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            emb = f.get_tensor(_KEY)
    except Exception:  # FileNotFoundError, a truncated or foreign file: a miss, never a failure
        return None
    if emb.dim() != 2 or emb.dtype != torch.float32 or not bool(torch.isfinite(emb).all()):
        return None
    return emb, meta


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
