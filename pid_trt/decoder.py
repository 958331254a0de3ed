"""``pid_trt.Decoder``: one decode object for every front end (CLI, diffusers, server).

    from pid_trt import Decoder

    with Decoder.load(backbone="flux", checkpoint="model_ema_bf16.pth", text_encoder="gemma-2-2b-it") as dec:
        image = dec.decode(latent, prompt="a lighthouse at dusk")   # [B, 3, H, W] float32 in [-1, 1]

What a :class:`Decoder` holds:

- the net config and weights, read once (on first need): the torch backend runs that model;
  the onnxruntime and tensorrt backends need it only to export a missing ONNX graph;
- a bounded, least-recently-used cache of backends keyed by (height, width, batch)
  (``max_backends``; the torch backend serves every size, so it is one entry), so a process
  that decodes mixed sizes exports / loads each size once;
- optionally the caption encoder (:mod:`pid_trt.text`), loaded on the first ``prompt=``.

Threads: :meth:`Decoder.decode` may be called from several threads at once. Decodes that
share a backend (torch: all of them; onnxruntime / tensorrt: the same size and batch) run
one at a time, in arrival order of the lock; decodes on different backends run
concurrently. A backend evicted from the cache is closed only after the decode using it
has finished. :meth:`close` waits for running decodes, then frees everything; a decode
after ``close`` raises :class:`~pid_trt.errors.ConfigError`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pid_trt.backends.base import Backend, Conditioning
from pid_trt.backends.factory import BackendKind, BackendRequest, create_backend
from pid_trt.buckets import Bucket, check_bucket, output_size
from pid_trt.config import NetConfig
from pid_trt.errors import ConfigError, InputFileError
from pid_trt.netspec import NetSpec, build_model, resolve_net

log = logging.getLogger("pid_trt.decoder")

#: Backends kept per Decoder before the least recently used one is closed.
DEFAULT_MAX_BACKENDS = 4
#: Environment variable naming the caption encoder's directory when ``text_encoder`` is None.
TEXT_ENCODER_ENV = "PIDTRT_TEXT_ENCODER"


@dataclass
class _Slot:
    """One cached backend and the lock that serialises the decodes running on it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    backend: Backend | None = None
    evicted: bool = False


class Decoder:
    """A loaded PiD network on one backend; see the module docstring. Build with :meth:`load`."""

    def __init__(
        self,
        spec: NetSpec,
        request: BackendRequest,
        *,
        text_encoder: Any = None,
        text_dtype: str | None = None,
        keep_text_encoder: bool | None = None,
        max_backends: int = DEFAULT_MAX_BACKENDS,
        memory_check: bool = True,
        memory_hint: str = "pass memory_check=False to try anyway",
    ) -> None:
        if isinstance(max_backends, bool) or not isinstance(max_backends, int) or max_backends < 1:
            raise ConfigError(f"max_backends={max_backends!r}: expected an integer >= 1")
        self.spec = spec
        self._request = request
        self._max_backends = max_backends
        self._memory_check, self._memory_hint = memory_check, memory_hint
        self._slots: OrderedDict[tuple[int, int, int] | None, _Slot] = OrderedDict()
        self._lock = threading.Lock()  # guards _slots, _model, _closed
        self._model: torch.nn.Module | None = None
        self._model_lock = threading.Lock()
        self._closed = False
        self._text_source = text_encoder
        self._text_dtype = text_dtype
        self._keep_text = keep_text_encoder
        self._text: Any = None
        self._text_lock = threading.Lock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        *,
        backbone: str | None = None,
        ckpt_type: str | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        net_config: str | os.PathLike[str] | dict | None = None,
        random_weights: bool = False,
        weights_seed: int = 0,
        backend: str = "torch",
        precision: str | None = None,
        device: str | None = None,
        engine_dir: str | os.PathLike[str] = "engines",
        export_dir: str | os.PathLike[str] = "export",
        hoist: bool = True,
        cuda_graph: bool = False,
        text_encoder: Any = None,
        text_dtype: str | None = None,
        keep_text_encoder: bool | None = None,
        max_backends: int = DEFAULT_MAX_BACKENDS,
        memory_check: bool = True,
        memory_hint: str = "pass memory_check=False to try anyway",
    ) -> Decoder:
        """Resolve the model options as the CLI does (same errors, :mod:`pid_trt.errors` types).

        backend: torch | onnxruntime | tensorrt; precision: fp32 | fp16 | bf16 | fp8 (default
        bf16 for tensorrt, as ``pidtrt build``, else fp32); device: cpu | cuda[:n] (default cuda
        for tensorrt, else cpu). text_encoder: a local Gemma-2-2B-it directory, a loaded
        :class:`pid_trt.text.CaptionEncoder`, or None ($PIDTRT_TEXT_ENCODER when a prompt is
        given). keep_text_encoder: keep the caption encoder resident after encoding (default:
        kept on the CPU, freed on a GPU so the decode has its memory). The weights are read on the
        first decode that needs them, after its memory check (torch: the first decode; onnxruntime /
        tensorrt: only to export a missing ONNX graph), or up front by :meth:`load_weights`.
        """
        kind = BackendRequest(kind=backend, spec=None).backend_kind
        if precision is None:
            precision = "bf16" if kind is BackendKind.TENSORRT else "fp32"
        if device is None:
            device = "cuda" if kind is BackendKind.TENSORRT else "cpu"
        elif kind is BackendKind.TENSORRT and not str(device).startswith("cuda"):
            raise ConfigError(f"--device {device}: the tensorrt backend runs on cuda")
        spec = resolve_net(
            backbone, ckpt_type, Path(checkpoint) if checkpoint is not None else None,
            Path(net_config) if isinstance(net_config, (str, os.PathLike)) else net_config,
            random_weights, weights_seed,
        )  # fmt: skip
        request = BackendRequest(
            kind=kind.value, spec=spec, device=str(device), dtype=str(precision), engine_dir=Path(engine_dir),
            export_dir=Path(export_dir), hoist=hoist, cuda_graph=cuda_graph,
        )  # fmt: skip
        request.precision  # noqa: B018 - validate now: one-line errors at load
        if kind is not BackendKind.TENSORRT:  # tensorrt: the engine store is checked before CUDA
            request.torch_device  # noqa: B018
        return cls(
            spec, request, text_encoder=text_encoder, text_dtype=text_dtype,
            keep_text_encoder=keep_text_encoder, max_backends=max_backends,
            memory_check=memory_check, memory_hint=memory_hint,
        )  # fmt: skip

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> NetConfig:
        """The net config (latent channels, down factor, sr scale, caption width ...)."""
        return self.spec.config

    @property
    def backend_name(self) -> str:
        return self._request.backend_kind.value

    @property
    def precision(self) -> str:
        return self._request.precision.value

    @property
    def device(self) -> str:
        return self._request.device

    @property
    def has_text_encoder(self) -> bool:
        """Whether a ``prompt`` can be encoded: an encoder was given (or is loaded), or
        $PIDTRT_TEXT_ENCODER names one."""
        return (
            self._text_source is not None or self._text is not None or bool(os.environ.get(TEXT_ENCODER_ENV))
        )

    def output_size(self, latent_hw: tuple[int, int], size: Any = None) -> tuple[int, int]:
        """(height, width) in pixels a latent of ``latent_hw`` cells decodes to; ``size``:
        (height, width) or "WxH" when it is not latent x pixels per cell."""
        return output_size(self.config, latent_hw, size)

    # ------------------------------------------------------------------ decoding
    def decode(
        self,
        latent: Any,
        caption_embedding: Any = None,
        *,
        prompt: str | Sequence[str] | None = None,
        degrade_sigma: Any = 0.0,
        seed: int = 0,
        noise: Sequence[Any] | None = None,
        size: Any = None,
        steps: int = 4,
    ) -> torch.Tensor:
        """Decode ``latent`` ([C, h, w] or [B, C, h, w], torch or numpy) into [B, 3, H, W]
        float32 in [-1, 1] on the CPU.

        caption_embedding: [T, D] or [B, T, D]; or ``prompt``: one string (every row) or B
        strings, encoded by the caption encoder. Without either, a random-weight stand-in net
        gets a seeded random caption; a real checkpoint refuses. degrade_sigma: a float or
        [B] in [0, 1]; seed: the sampler's noise (ignored with ``noise``, a list of ``steps``
        draws [B, 3, H, W]); size: (height, width) or "WxH"; steps: 4 = the released sampler.
        Inputs are checked by the latent file's rules (:func:`pid_trt.io.latent_from_tensors`).
        """
        from pid_trt.io import latent_from_tensors, noise_from_tensors
        from pid_trt.resources import check_decode_memory, run_guarded
        from pid_trt.sampling import draw_noise, sample

        self._check_open()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps={steps!r}: expected an integer >= 1")
        if prompt is not None and caption_embedding is not None:
            raise ConfigError("give caption_embedding or prompt, not both")
        lat = latent_from_tensors(latent, caption_embedding, degrade_sigma, self.config)
        batch = lat.batch
        if prompt is not None:
            caption = self.encode_prompts(prompt, batch)
        else:
            caption = lat.caption if lat.caption is not None else self._stand_in_caption(batch, seed)
        height, width = output_size(self.config, lat.latent_hw, size)
        notice = check_bucket(Bucket(height=height, width=width), self.spec.preset)
        if notice:
            log.warning(notice)
        req = self._request
        mem_device = "cuda" if req.backend_kind is BackendKind.TENSORRT else req.device
        if self._memory_check:
            check_decode_memory(
                self.config, height, width, batch, req.dtype, mem_device, steps,
                load_precision="fp32" if req.backend_kind is BackendKind.TORCH and mem_device == "cpu" else None,
                hint=self._memory_hint,
            )  # fmt: skip
        if noise is not None:
            draws = noise_from_tensors(noise, steps, batch, height, width)
        else:
            draws = draw_noise((batch, 3, height, width), steps, seed)
        cond = Conditioning(lat.latent, caption, lat.degrade_sigma, height, width)

        def run() -> torch.Tensor:
            with self._bound(height, width, batch) as backend:
                dev = req.torch_device
                return sample(backend.bind(cond), [d.to(dev) for d in draws], steps).float().cpu()

        return run_guarded(run, f"decode of batch {batch} at {width}x{height}", mem_device)

    def backend(self, height: int, width: int, batch: int = 1) -> _Bound:
        """The cached backend for one (size, batch), created if needed, as a context manager
        that holds its lock: ``with dec.backend(h, w, b) as be: be.bind(cond) ...``."""
        self._check_open()
        return self._bound(height, width, batch)

    def _bound(self, height: int, width: int, batch: int) -> _Bound:
        key = None if self._request.backend_kind is BackendKind.TORCH else (height, width, batch)
        return _Bound(self, key, height, width, batch)

    def _slot(self, key: tuple[int, int, int] | None) -> _Slot:
        """The slot of ``key`` (new if absent), marked most recently used."""
        with self._lock:
            self._check_open()
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot()
            self._slots.move_to_end(key)
            return slot

    def _evict(self) -> None:
        """Close least-recently-used backends beyond ``max_backends`` (each after its running
        decode, if any, has finished)."""
        victims = []
        with self._lock:
            while len(self._slots) > self._max_backends:
                _, slot = self._slots.popitem(last=False)
                victims.append(slot)
        for slot in victims:
            with slot.lock:
                slot.evicted = True
                if slot.backend is not None:
                    slot.backend.close()
                    slot.backend = None

    def cached_sizes(self) -> list[tuple[int, int, int] | None]:
        """Keys of the backends held now, least recently used first (None: the torch backend)."""
        with self._lock:
            return [k for k, s in self._slots.items() if s.backend is not None]

    # ------------------------------------------------------------------ weights and captions
    def load_weights(self) -> None:
        """Read the weights now (strict checkpoint load) instead of on the first decode, e.g.
        before a server reports ready."""
        self._check_open()
        self._load_model()

    def _load_model(self) -> torch.nn.Module:
        """The fp32 CPU reference model, built once. The torch backend takes it over (it may
        cast it); other backends only trace it."""
        with self._model_lock:
            if self._model is None:
                self._model = build_model(self.spec)
            return self._model

    def _stand_in_caption(self, batch: int, seed: int) -> torch.Tensor:
        config = self.config
        if self.spec.released_preset or not self.spec.random_weights:
            raise InputFileError(
                f"no caption: pass caption_embedding [B, {config.txt_max_length}, {config.txt_embed_dim}] "
                "(Gemma-2-2B hidden states of the caption) or a prompt with a text encoder "
                "(see README, 'Caption embeddings')"
            )
        gen = torch.Generator().manual_seed(int(seed))
        return torch.randn(batch, config.txt_max_length, config.txt_embed_dim, generator=gen)

    def encode_prompts(self, prompt: str | Sequence[str], batch: int | None = None) -> torch.Tensor:
        """Caption embeddings [B, T, D] float32 for one prompt (repeated over ``batch``) or a
        list of B prompts, by the caption encoder (loaded on first use)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ConfigError("prompt: expected a string or a non-empty list of strings")
        if batch is not None:
            if len(prompts) == 1:
                prompts = prompts * batch
            elif len(prompts) != batch:
                raise ConfigError(
                    f"{len(prompts)} prompts for a latent of batch {batch}: expected 1 or {batch}"
                )
        with self._text_lock:
            self._check_open()
            encoder = self._text_encoder()
            try:
                emb = encoder.encode(prompts)
            finally:
                if not self._keep_text_resident():
                    encoder.free()
                    self._text = None
        width = int(emb.shape[-1])
        if width != self.config.txt_embed_dim:
            raise ConfigError(
                f"text encoder gives width {width}, expected {self.config.txt_embed_dim} (txt_embed_dim of this net)"
            )
        return emb.float().cpu()

    def _keep_text_resident(self) -> bool:
        if self._keep_text is not None:
            return self._keep_text
        return not self._request.device.startswith("cuda")

    def _text_encoder(self) -> Any:
        if self._text is not None:
            return self._text
        from pid_trt.text import CaptionEncoder

        source = self._text_source
        if isinstance(source, CaptionEncoder):
            self._text = source
            return source
        if source is None:
            source = os.environ.get(TEXT_ENCODER_ENV)
            if not source:
                raise ConfigError(
                    f"a prompt needs the caption encoder: pass text_encoder=DIR (CLI: --text-encoder DIR) or set "
                    f"{TEXT_ENCODER_ENV} to a local Gemma-2-2B-it directory (see README, 'Caption embeddings')"
                )
        self._text = CaptionEncoder.load(source, device=self._request.device, dtype=self._text_dtype)
        return self._text

    # ------------------------------------------------------------------ lifetime
    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError("this Decoder is closed: load a new one")

    def close(self) -> None:
        """Free every backend, the model and the caption encoder. Idempotent."""
        with self._lock:
            self._closed = True
            slots = list(self._slots.values())
            self._slots.clear()
            self._model = None
        for slot in slots:
            with slot.lock:
                slot.evicted = True
                if slot.backend is not None:
                    slot.backend.close()
                    slot.backend = None
        with self._text_lock:
            if self._text is not None:
                self._text.free()
                self._text = None

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Decoder({self.spec.name}, backend={self.backend_name}:{self.precision}, device={self.device}, "
            f"cached={self.cached_sizes()})"
        )


class _Bound:
    """Context manager: the backend of one key, locked while in use; evicts others on exit."""

    def __init__(self, dec: Decoder, key: Any, height: int, width: int, batch: int) -> None:
        self.dec, self.key = dec, key
        self.height, self.width, self.batch = height, width, batch
        self.slot: _Slot | None = None

    def __enter__(self) -> Backend:
        dec = self.dec
        while True:
            slot = dec._slot(self.key)
            slot.lock.acquire()
            if not slot.evicted:
                break
            slot.lock.release()  # evicted between lookup and lock: take a fresh slot
        try:
            if slot.backend is None:
                req = dec._request
                request = BackendRequest(
                    kind=req.kind, spec=req.spec, device=req.device, dtype=req.dtype, height=self.height,
                    width=self.width, batch=self.batch, engine_dir=req.engine_dir,
                    export_dir=req.export_dir, hoist=req.hoist, cuda_graph=req.cuda_graph,
                    model_loader=dec._load_model,
                )  # fmt: skip
                slot.backend = create_backend(request)
        except BaseException:
            slot.lock.release()
            raise
        self.slot = slot
        return slot.backend

    def __exit__(self, *exc: object) -> None:
        assert self.slot is not None
        self.slot.lock.release()
        self.dec._evict()
