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
- a :class:`pid_trt.tiling.PlanRunner` over that cache: each decode's plan (one shot or tiles,
  ``decode(tiles=...)``), its memory check, and its denoiser (tiles over ``devices=`` included);
- optionally the caption encoder (:mod:`pid_trt.text`), loaded on the first ``prompt=`` not
  found before, a bounded cache of the caption embeddings (``caption_cache``;
  :mod:`pid_trt.captions`) and the persistent caption store behind it (``caption_store``;
  :mod:`pid_trt.caption_store`);
- the caption rule (:mod:`pid_trt.caption_choice`): prompt, caption, else the null caption
  (``null_caption``, the store, or "" encoded) for a net that needs one.

Threads: :meth:`Decoder.decode` may be called from several threads at once. Decodes that
share a backend (torch: all of them; onnxruntime / tensorrt: the same size and batch) run
one at a time, in arrival order of the lock; decodes on different backends run
concurrently. A backend evicted from the cache is closed only after the decode using it
has finished. :meth:`close` waits for running decodes, then frees everything; a decode
after ``close`` raises :class:`~pid_trt.errors.ConfigError`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from pid_trt.backends.base import Conditioning
from pid_trt.backends.cache import BackendCache
from pid_trt.backends.factory import BackendRequest, check_torch_device
from pid_trt.buckets import output_size
from pid_trt.caption_choice import Caption, CaptionChooser
from pid_trt.caption_store import CaptionStore
from pid_trt.captions import (
    DEFAULT_CAPTION_CACHE,
    TEXT_ENCODER_ENV,  # noqa: F401 - public here since before the cache
    CacheStats,
    CaptionProvider,
)
from pid_trt.config import NetConfig
from pid_trt.errors import ConfigError, PidTrtError
from pid_trt.netspec import NetSpec, build_model
from pid_trt.options import NetOptions, Runtime, RuntimeOptions, as_runtime
from pid_trt.tiling import Envelope, PlanRunner, SizePlan, TileOptions, envelope_for
from pid_trt.tiling.options import tile_options

if TYPE_CHECKING:
    from pid_trt.model import PidNet

#: Backends kept per Decoder before the least recently used one is closed.
DEFAULT_MAX_BACKENDS = 4


class Decoder:
    """A loaded PiD network on one backend; see the module docstring. Build with :meth:`load`."""

    def __init__(
        self,
        spec: NetSpec,
        runtime: RuntimeOptions | Runtime,
        *,
        text_encoder: Any = None,
        text_dtype: str | None = None,
        keep_text_encoder: bool | None = None,
        caption_cache: int = DEFAULT_CAPTION_CACHE,
        max_backends: int = DEFAULT_MAX_BACKENDS,
        memory_check: bool = True,
        memory_hint: str = "pass memory_check=False to try anyway",
        envelope: Envelope | str | None = None,
        null_caption: Any = None,
        caption_store: Any = None,
        caption_store_max_mb: float | None = None,
    ) -> None:
        self.spec = spec
        if isinstance(envelope, str):
            envelope = Envelope.parse(envelope, name=f"{spec.name} (given)")
        self.envelope: Envelope | None = envelope if envelope is not None else envelope_for(spec.preset)
        self.runtime: Runtime = as_runtime(runtime)
        self._request = BackendRequest(spec, self.runtime, model_loader=self._load_model)
        self._backends = BackendCache(max_backends)
        self._runner = PlanRunner(self._request, self._backends, self.envelope, memory_check, memory_hint)
        self._lock = threading.Lock()  # guards _model, _closed
        self._model: PidNet | None = None
        self._model_lock = threading.Lock()
        self._closed = False
        self._captions = CaptionProvider(
            text_encoder,
            device=self.device,
            dtype=text_dtype,
            keep=keep_text_encoder,
            max_entries=caption_cache,
            store=_caption_store(caption_store, caption_store_max_mb),
        )
        self._chooser = CaptionChooser(spec, self._captions, null_caption)

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
        caption_cache: int = DEFAULT_CAPTION_CACHE,
        max_backends: int = DEFAULT_MAX_BACKENDS,
        memory_check: bool = True,
        memory_hint: str = "pass memory_check=False to try anyway",
        envelope: Envelope | str | None = None,
        null_caption: Any = None,
        caption_store: Any = None,
        caption_store_max_mb: float | None = None,
    ) -> Decoder:
        """Resolve the model options as the CLI does (same errors, :mod:`pid_trt.errors` types).

        backend: a registered backend (torch | torch-compile | onnxruntime | tensorrt), optionally
        ``NAME[:PRECISION][@DEVICE]``; precision: fp32 | fp16 | bf16 | fp8 (default: the backend's,
        :mod:`pid_trt.backends.registry`: tensorrt bf16 as ``pidtrt build``; torch fp32 on the CPU,
        bf16 on cuda; onnxruntime fp32 on the CPU, fp16 on cuda); device: cpu | cuda[:n] (default
        cuda for tensorrt, else cpu). text_encoder: a local Gemma-2-2B-it directory, a loaded
        :class:`pid_trt.text.CaptionEncoder`, or None ($PIDTRT_TEXT_ENCODER when a prompt is
        given). keep_text_encoder: keep the caption encoder resident after encoding (default:
        kept on the CPU, freed on a GPU so the decode has its memory). caption_cache: caption
        embeddings kept by (prompt, text encoder), so a repeated prompt skips the encoder
        (0: off; :mod:`pid_trt.captions`, :meth:`caption_stats`). The weights are read on the
        first decode that needs them, after its memory check (torch: the first decode; onnxruntime /
        tensorrt: only to export a missing ONNX graph), or up front by :meth:`load_weights`.
        envelope: the net's trained output sizes ("WxH,WxH..." or a
        :class:`pid_trt.tiling.Envelope`; default: the checkpoint type's, none for stand-ins and
        custom nets), which ``decode(tiles="auto")`` keeps one-shot decodes inside.
        null_caption: the null caption for decodes without prompt or caption (a file path: ours,
        ``caption_embedding``, or ``null_caption_embs``; or a tensor [T, D]; None: $PIDTRT_NULL_CAPTION,
        else the caption store, else "" by the text encoder; :mod:`pid_trt.caption_choice`).
        caption_store: the persistent caption store's folder (None: $PIDTRT_CAPTION_STORE, else the
        user's cache folder; False: none), bounded to caption_store_max_mb (default 1024).
        """
        net = NetOptions(backbone, ckpt_type, checkpoint, net_config, random_weights, weights_seed)
        runtime = RuntimeOptions(backend, precision, device, engine_dir, export_dir, hoist, cuda_graph)
        return cls.from_options(
            net, runtime, text_encoder=text_encoder, text_dtype=text_dtype, keep_text_encoder=keep_text_encoder,
            caption_cache=caption_cache, max_backends=max_backends, memory_check=memory_check,
            memory_hint=memory_hint, envelope=envelope, null_caption=null_caption, caption_store=caption_store,
            caption_store_max_mb=caption_store_max_mb,
        )  # fmt: skip

    @classmethod
    def from_options(cls, net: NetOptions, runtime: RuntimeOptions | Runtime, **kwargs: Any) -> Decoder:
        """A Decoder from the two option objects (:mod:`pid_trt.options`); ``kwargs`` as
        :meth:`load` (text_encoder, text_dtype, keep_text_encoder, caption_cache, max_backends, memory_check,
        memory_hint, envelope, null_caption, caption_store, caption_store_max_mb). The runtime options are checked before the net options are resolved,
        so a bad ``--backend`` is reported first."""
        runtime = as_runtime(runtime)
        if runtime.device.startswith("cuda") and runtime.backend.devices != ("cuda",):
            check_torch_device(runtime.device)  # no CUDA: one-line error now
        return cls(net.resolve(), runtime, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> NetConfig:
        """The net config (latent channels, down factor, sr scale, caption width ...)."""
        return self.spec.config

    @property
    def backend_name(self) -> str:
        return self.runtime.name

    @property
    def precision(self) -> str:
        return self.runtime.precision.value

    @property
    def device(self) -> str:
        return self.runtime.device

    @property
    def has_text_encoder(self) -> bool:
        """Whether a ``prompt`` can be encoded: an encoder was given (or is loaded), or
        $PIDTRT_TEXT_ENCODER names one."""
        return self._captions.available

    def caption_stats(self) -> CacheStats:
        """The caption cache's hits, misses and entries (:class:`pid_trt.captions.CacheStats`)."""
        return self._captions.stats()

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
        tiles: Any = "auto",
        tile_size: Any = None,
        tile_overlap: int | None = None,
        tile_batch: int = 1,
        allow_untrained_size: bool = False,
        devices: Any = None,
        tiling: TileOptions | None = None,
        output_dtype: torch.dtype = torch.float32,
        keep_on_device: bool = False,
    ) -> torch.Tensor:
        """Decode ``latent`` ([C, h, w] or [B, C, h, w], torch or numpy) into [B, 3, H, W]
        float32 in [-1, 1] on the CPU; with ``output_dtype`` torch.uint8 (or torch.uint16)
        the pixels [B, 3, H, W] of :func:`pid_trt.io.quantize`, quantized on the decode's device
        before the copy to the CPU (channels first, as the float image). ``keep_on_device``:
        no copy to the CPU: the result stays where it was decoded (a CUDA tensor on a GPU, for
        an encoder that runs there: nvJPEG, :class:`pid_trt.io.writer.ImageWriter`).

        caption_embedding: [T, D] or [B, T, D]; or ``prompt``: one string (every row) or B
        strings, encoded by the caption encoder. Without either, the null caption for a net that
        needs a caption, a seeded random one for a random-weight stand-in (:meth:`choose_caption`). degrade_sigma: a float or
        [B] in [0, 1]; seed: the sampler's noise (ignored with ``noise``, a list of ``steps``
        draws [B, 3, H, W]); size: (height, width) or "WxH"; steps: 4 = the released sampler.
        Inputs are checked by the latent file's rules (:func:`pid_trt.io.latent_from_tensors`).

        The tiling choice: ``tiling``, a :class:`pid_trt.tiling.TileOptions` (:meth:`plan` says
        what a decode will do), or the keywords it is made of (a shim for it; give one or the
        other): tiles "auto" (one shot inside the trained envelope, tiles outside it or where
        one shot would not fit the memory), "off" (one shot; outside the envelope refused unless
        ``allow_untrained_size``) or "COLSxROWS" (``"1x1"`` equals one shot exactly); tile_size
        "WxH" or (height, width); tile_overlap and tile_size in pixels; tile_batch tiles per
        backend call; devices "cuda:0,cuda:1" or a list: tile batches dealt round-robin over one
        backend per device, run concurrently, blended on this Decoder's device.
        """
        from pid_trt.io import latent_from_tensors, noise_from_tensors
        from pid_trt.resources import run_guarded
        from pid_trt.sampling import draw_noise, sample

        self._check_open()
        _check_decode_args(output_dtype, steps)
        tiling = tile_options(
            tiling, tiles=tiles, tile_size=tile_size, tile_overlap=tile_overlap, tile_batch=tile_batch,
            allow_untrained_size=allow_untrained_size, devices=devices,
        )  # fmt: skip
        if prompt is not None and caption_embedding is not None:
            raise ConfigError("give caption_embedding or prompt, not both")
        lat = latent_from_tensors(latent, caption_embedding, degrade_sigma, self.config)
        b, (h, w) = lat.batch, output_size(self.config, lat.latent_hw, size)
        size_plan = self._runner.plan(h, w, b, steps, tiling)  # refuses before memory or weights
        caption = self.choose_caption(b, lat.caption, prompt, seed).embedding
        self._runner.check_memory(size_plan)
        draws = (
            noise_from_tensors(noise, steps, b, h, w)
            if noise is not None
            else draw_noise((b, 3, h, w), steps, seed)
        )
        cond = Conditioning(lat.latent, caption, lat.degrade_sigma, h, w)

        def run() -> torch.Tensor:
            with self._runner.denoiser(
                size_plan, cond, tiling.devices
            ) as denoise:  # engines checked before CUDA
                dev = self._request.torch_device
                image = sample(denoise, [d.to(dev) for d in draws], steps)
                return _output_image(image, output_dtype, keep_on_device)

        grid = size_plan.grid
        tiled = "" if grid is None else f" in {grid.cols}x{grid.rows} tiles"
        return run_guarded(run, f"decode of batch {b} at {w}x{h}{tiled}", self._request.device)

    def plan(
        self,
        height: int,
        width: int,
        batch: int = 1,
        steps: int = 4,
        *,
        tiles: Any = "auto",
        tile_size: Any = None,
        tile_overlap: int | None = None,
        tile_batch: int = 1,
        allow_untrained_size: bool = False,
        devices: Any = None,
        tiling: TileOptions | None = None,
    ) -> SizePlan:
        """What :meth:`decode` with this ``tiling`` (or these keywords) does for a ``width`` x
        ``height`` output of ``batch`` images: one shot or tiles, the engines, both ways' cost
        (:class:`pid_trt.tiling.SizePlan`; ``render()`` prints it). Reads no weights."""
        self._check_open()
        tiling = tile_options(
            tiling, tiles=tiles, tile_size=tile_size, tile_overlap=tile_overlap, tile_batch=tile_batch,
            allow_untrained_size=allow_untrained_size, devices=devices,
        )  # fmt: skip
        return self._runner.plan(height, width, batch, steps, tiling)

    def denoiser(self, size_plan: SizePlan, cond: Conditioning, devices: Sequence[str] = ()) -> Any:
        """The denoiser :meth:`decode` runs for ``cond`` under ``size_plan`` (one shot: the
        backend's; tiled: a :class:`pid_trt.tiling.TiledDenoiser`), as a context manager that
        holds its backends: ``with dec.denoiser(plan, cond) as den: sample(den, noise, 4)``."""
        self._check_open()
        return self._runner.denoiser(size_plan, cond, devices)

    def backend(self, height: int, width: int, batch: int = 1) -> Any:
        """The cached backend for one (size, batch), created if needed, as a context manager
        that holds its lock: ``with dec.backend(h, w, b) as be: be.bind(cond) ...``."""
        self._check_open()
        return self._runner.bound(height, width, batch)

    def cached_sizes(self) -> list[tuple[int, int, int] | None]:
        """Keys of the backends held now, least recently used first (None: a backend that
        serves every size, e.g. torch; ``("device", slot, name, ...)``: a ``devices=`` backend)."""
        return self._backends.keys()  # type: ignore[return-value]

    # ------------------------------------------------------------------ weights and captions
    def load_weights(self) -> None:
        """Read the weights now (strict checkpoint load) instead of on the first decode, e.g.
        before a server reports ready."""
        self._check_open()
        self._load_model()

    def _load_model(self) -> PidNet:
        """The fp32 CPU reference model, built once. The torch backend takes it over (it may
        cast it); other backends only trace it."""
        with self._model_lock:
            if self._model is None:
                self._model = build_model(self.spec)
            return self._model

    def choose_caption(self, batch: int, caption: Any = None, prompt: Any = None, seed: int = 0) -> Caption:
        """The caption a decode of ``batch`` rows uses and its source (``prompt`` | ``file`` |
        ``null (FILE)`` | ``null (stored)`` | ``null (encoded)`` | ``random stand-in``):
        ``caption`` [B, T, D] (already checked), else ``prompt``, else the null caption for a
        net that needs one (:mod:`pid_trt.caption_choice`); a one-line error when there is none."""
        self._check_open()
        return self._chooser.choose(batch, caption, prompt, seed, self.encode_prompts)

    def encode_prompts(self, prompt: str | Sequence[str], batch: int | None = None) -> torch.Tensor:
        """Caption embeddings [B, T, D] float32 for one prompt (repeated over ``batch``) or a
        list of B prompts, by the caption encoder (loaded on first use); prompts seen before
        come from the caption cache, bit for bit what the encoder gave then."""
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
        self._check_open()
        emb = self._captions.encode(prompts)
        width = int(emb.shape[-1])
        if width != self.config.txt_embed_dim:
            raise ConfigError(
                f"text encoder gives width {width}, expected {self.config.txt_embed_dim} (txt_embed_dim of this net)"
            )
        return emb.float().cpu()

    # ------------------------------------------------------------------ lifetime
    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError("this Decoder is closed: load a new one")

    def close(self) -> None:
        """Free every backend, the model and the caption encoder. Idempotent."""
        with self._lock:
            self._closed = True
            self._model = None
        self._backends.close()
        self._captions.free()

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Decoder({self.spec.name}, backend={self.backend_name}:{self.precision}, device={self.device}, "
            f"cached={self.cached_sizes()})"
        )


def _caption_store(store: Any, max_mb: float | None) -> CaptionStore | None:
    """The persistent store of ``Decoder.load(caption_store=...)``: None -> the default folder
    (or none when $PIDTRT_CAPTION_STORE is "off"), False -> none, a folder or a CaptionStore."""
    if store is False:
        return None
    if isinstance(store, CaptionStore):
        return store
    return CaptionStore.default(store, max_mb)


def _check_decode_args(output_dtype: torch.dtype, steps: Any) -> None:
    """Refuse an ``output_dtype`` or ``steps`` :meth:`Decoder.decode` cannot honour (one line)."""
    if output_dtype not in (torch.float32, torch.uint8, torch.uint16):
        raise ConfigError(f"output_dtype={output_dtype}: expected torch.float32, torch.uint8 or torch.uint16")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps={steps!r}: expected an integer >= 1")


def _output_image(image: torch.Tensor, output_dtype: torch.dtype, keep_on_device: bool) -> torch.Tensor:
    """A decoded [B, 3, H, W] as :meth:`Decoder.decode` returns it: float32, or quantized
    (:func:`pid_trt.io.quantize`) on its own device, then on the CPU (unless
    ``keep_on_device``); non-finite values are refused before they are quantized away."""
    from pid_trt.io import quantize

    if output_dtype == torch.float32:
        image = image.float()
        return image if keep_on_device else image.cpu()
    if not bool(torch.isfinite(image).all()):
        raise PidTrtError("decoded images contain NaN/Inf; refusing to quantize them")
    if keep_on_device:  # channels first, each image contiguous: the planes a device encoder reads
        return quantize(image, output_dtype).contiguous()
    # channels-last in memory (the shape stays [B, 3, H, W]): the host gets rows of RGB pixels, as encoders take them
    return quantize(image, output_dtype).contiguous(memory_format=torch.channels_last).cpu()
