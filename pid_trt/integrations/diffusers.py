"""PiD as the decoder of a diffusers pipeline (``pid/ARCHITECTURE.md`` §2.3, §3.3).

    from diffusers import FluxPipeline
    from pid_trt import Decoder
    from pid_trt.integrations.diffusers import generate

    pipe = FluxPipeline.from_pretrained("FLUX.1-dev", torch_dtype=torch.bfloat16).to("cuda")
    with Decoder.load(backbone="flux", checkpoint="model_ema_bf16.pth", text_encoder="gemma-2-2b-it",
                      backend="tensorrt") as dec:
        out = generate(pipe, dec, "a lighthouse at dusk", 2048, 2048)   # out.image [1, 3, 2048, 2048]

- :func:`pid_latent`: a pipeline's ``output_type="latent"`` (or a latent captured mid-loop)
  -> the PiD latent [B, C, h, w] float32. The pipelines already return *normalised*
  latents (scaled / shifted / BN-normalised: what the VAE decode un-does), which is what PiD
  takes; only the packing is undone, with diffusers' own helpers.
- :func:`to_pid_frame`: the latent and its sigma in the frame PiD was trained on (identity
  for flow matching; SDXL's Euler frame -> variance preserving).
- :class:`EarlyCapture`: a ``callback_on_step_end`` that keeps the latent after step K (or
  after each of several steps) and stops the pipeline after the last.
- :func:`run_ldm`: one LDM run at size / sr_scale, its latents at the capture steps.
- :func:`generate`: prompt -> LDM at size / sr_scale -> capture -> PiD decode.
- :func:`encode_image` (from :mod:`pid_trt.integrations.vae`): image -> PiD latent.

diffusers is imported inside the functions that need it; this module imports without it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pid_trt.errors import ConfigError
from pid_trt.integrations.latents import pid_latent, to_pid_frame
from pid_trt.integrations.ldm import (
    check_capture_step,
    check_decoder_fits,
    default_capture_step,
    ldm_for_pipeline,
    ldm_size,
    ldm_spec,
    resolve_capture_steps,
)
from pid_trt.integrations.vae import (
    add_noise,
    dtype_kwargs,
    encode_image,
    load_image,
    load_vae,
    pid_to_vae,
    vae_to_pid,
)
from pid_trt.tiling.options import TileOptions

if TYPE_CHECKING:
    from pid_trt.decoder import Decoder

__all__ = [
    "Capture",
    "EarlyCapture",
    "Generation",
    "LdmCapture",
    "LdmRun",
    "add_noise",
    "default_capture_step",
    "encode_image",
    "generate",
    "ldm_spec",
    "load_image",
    "load_pipeline",
    "load_vae",
    "pid_latent",
    "pid_to_vae",
    "pipeline_class_name",
    "pid_caption",
    "prompt_caption",
    "quiet_hf_logs",
    "run_ldm",
    "to_pid_frame",
    "vae_to_pid",
]


def quiet_hf_logs() -> None:
    """Keep diffusers' / transformers' progress bars and advice lines out of the CLI's output
    (errors still show)."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"diffusers\..*")
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()


def load_pipeline(directory: str | os.PathLike[str], device: str = "cpu", dtype: torch.dtype | None = None):
    """``DiffusionPipeline.from_pretrained(directory, local_files_only=True)`` on ``device``
    (nothing downloaded; progress bars off). ConfigError when it is not a loadable folder."""
    from diffusers import DiffusionPipeline

    root = Path(directory)
    if not (root / "model_index.json").is_file():
        raise ConfigError(
            f"pipeline {root}: no model_index.json (expected a local diffusers pipeline folder)"
        )
    try:
        pipe = DiffusionPipeline.from_pretrained(root, local_files_only=True, **dtype_kwargs(dtype))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError) as exc:
        raise ConfigError(f"pipeline {root}: cannot load it ({str(exc).splitlines()[0]})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ---------------------------------------------------------------------------------- capture
@dataclass(frozen=True)
class Capture:
    """One latent kept by :class:`EarlyCapture`: after LDM step ``step`` (1-based), as the
    pipeline held it (packed for flux / flux2 / qwenimage; feed it to :func:`pid_latent`) but
    in PiD's frame (:func:`to_pid_frame`), its noise level ``sigma`` in that frame and the
    scheduler's own ``scheduler_sigma`` (``sigmas[step]``)."""

    step: int
    latent: torch.Tensor
    sigma: float
    scheduler_sigma: float


class EarlyCapture:
    """``callback_on_step_end`` that keeps the latent after step K (or after each of several
    steps, in one run) and stops the pipeline after the last of them.

    Indexing: diffusers calls the callback after loop iteration i (0-based), once the
    scheduler step has moved the latent from ``scheduler.sigmas[i]`` to ``sigmas[i + 1]``.
    "After step K" (1-based, upstream's ``--save_xt_steps K``) is therefore iteration
    i = K - 1, and the latent then sits at ``sigmas[K]``: that is the ``degrade_sigma`` kept
    (after :func:`to_pid_frame`, which also rescales SDXL's latent). K = the step count is
    the final latent (sigma 0 for the flow schedulers). After the last capture the callback
    sets ``pipe._interrupt = True``: the pipelines skip every remaining iteration (no
    transformer call), so the LDM costs max(K) steps, whatever the number of captures.

    capture_step: one step K, several (e.g. ``[22, 24, 26]``: one LDM run keeps all three),
    or None for :func:`~pid_trt.integrations.ldm.default_capture_step` of the run's step
    count (read from the scheduler at the run's first step; one object may serve several
    runs, each run replacing the last one's captures). After the run: ``captures`` (one
    :class:`Capture` per step, ascending), and for the last one (the run's stop) ``latent``,
    ``sigma``, ``scheduler_sigma``; ``step`` (the last K) and ``steps`` (the run's count).
    Pass it with ``callback_on_step_end_tensor_inputs=["latents"]`` (the default).
    """

    tensor_inputs = ["latents"]

    def __init__(self, backbone: str, capture_step: int | Sequence[int] | None = None) -> None:
        self.spec = ldm_spec(backbone)
        requested = None
        if capture_step is not None:
            requested = tuple(capture_step) if isinstance(capture_step, (list, tuple)) else (capture_step,)
            for k in requested:
                if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                    raise ConfigError(f"capture step {k!r}: expected an integer >= 1 (or None: the default)")
            if not requested:
                raise ConfigError("capture steps []: expected at least one step (or None: the default)")
        self.capture_steps = requested
        self.captures: list[Capture] = []
        self.step: int | None = None
        self.steps: int | None = None
        self._targets: frozenset[int] = frozenset()

    @property
    def capture_step(self) -> int | None:
        """The one requested step (None: the default, or several requested)."""
        return self.capture_steps[0] if self.capture_steps and len(self.capture_steps) == 1 else None

    @property
    def captured(self) -> bool:
        return bool(self.captures)

    @property
    def latent(self) -> torch.Tensor | None:
        return self.captures[-1].latent if self.captures else None

    @property
    def sigma(self) -> float | None:
        return self.captures[-1].sigma if self.captures else None

    @property
    def scheduler_sigma(self) -> float | None:
        return self.captures[-1].scheduler_sigma if self.captures else None

    def _resolve(self, pipe: Any) -> frozenset[int]:
        steps = len(pipe.scheduler.timesteps) // getattr(pipe.scheduler, "order", 1)
        self.steps = steps
        if self.capture_steps is None:
            return frozenset({default_capture_step(self.spec, steps)})
        return frozenset(check_capture_step(k, steps) for k in self.capture_steps)

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        if step_index == 0 or self.step is None:  # a new run (the object may be reused)
            self.captures = []
            self._targets = self._resolve(pipe)
            self.step = max(self._targets)
        k = step_index + 1
        if k in self._targets and all(c.step != k for c in self.captures):
            sigmas = pipe.scheduler.sigmas
            scheduler_sigma = float(sigmas[min(k, len(sigmas) - 1)])
            latent = callback_kwargs["latents"].detach().clone()
            latent, sigma = to_pid_frame(latent, scheduler_sigma, self.spec.name)
            self.captures.append(Capture(k, latent, float(sigma), scheduler_sigma))
            if k == self.step and k < (self.steps or 0):
                pipe._interrupt = True  # the loop `continue`s through the remaining steps
        return callback_kwargs


# ---------------------------------------------------------------------------------- generate
@dataclass(frozen=True)
class LdmCapture:
    """One captured latent ready for PiD: after LDM step ``step``, the PiD latent [B, C, h, w]
    float32 (unpacked, in PiD's frame; on the pipeline's device) and its ``sigma``."""

    step: int
    latent: torch.Tensor
    sigma: float


@dataclass(frozen=True)
class LdmRun:
    """What one LDM run (:func:`run_ldm`) kept: ``captures`` ascending by step; ``steps``
    the run's step count; ``ldm_size`` (height, width) it ran at; ``backbone`` the LDM name;
    ``seconds`` the pipeline call's wall time."""

    captures: tuple[LdmCapture, ...]
    steps: int
    ldm_size: tuple[int, int]
    backbone: str
    seconds: float


@dataclass(frozen=True)
class Generation:
    """What :func:`generate` made.

    image: [B, 3, H, W] float32 in [-1, 1]; latent: the PiD latent [B, C, h, w] decoded;
    caption: the caption embedding used ([B, T, D]), or None when a random-weight stand-in
    net drew its own; degrade_sigma: the latent's noise level; step / steps: captured after
    step K of N; ldm_size: (height, width) the LDM ran at; backbone: the LDM name;
    caption_source: prompt, file, null (FILE), null (stored), null (encoded) or random stand-in.
    """

    image: torch.Tensor
    latent: torch.Tensor
    caption: torch.Tensor | None
    degrade_sigma: float
    step: int
    steps: int
    ldm_size: tuple[int, int]
    backbone: str
    caption_source: str = ""


def pipeline_class_name(directory: str | os.PathLike[str]) -> str:
    """The pipeline class a local diffusers folder names (``model_index.json``'s
    ``_class_name``), read without loading anything; ConfigError when it is not such a folder."""
    root = Path(directory)
    index = root / "model_index.json"
    if not root.is_dir():
        raise ConfigError(f"--pipeline {root}: not a directory")
    if not index.is_file():
        raise ConfigError(
            f"pipeline {root}: no model_index.json (expected a local diffusers pipeline folder)"
        )
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise ConfigError(f"pipeline {root}: model_index.json cannot be read ({exc})") from None
    if not isinstance(name, str):
        raise ConfigError(f"pipeline {root}: model_index.json has no _class_name")
    return name


def pid_caption(decoder: Decoder, prompt: Any, batch: int, seed: int = 0) -> Any:
    """PiD's caption for an LDM run of ``prompt`` (:class:`pid_trt.caption_choice.Caption`):
    the prompt's embedding when the decoder has a caption encoder; else the rule of every
    front end without a caption: the null caption for a net that needs one (``null_caption=``,
    the caption store, ...), a seeded stand-in for a random-weight net."""
    if prompt is not None and decoder.has_text_encoder:
        return decoder.choose_caption(batch, prompt=prompt)
    return decoder.choose_caption(batch, seed=seed)


def prompt_caption(decoder: Decoder, prompt: Any, batch: int) -> torch.Tensor | None:
    """:func:`pid_caption`'s embedding [batch, T, D], or None for a random-weight stand-in net
    without a caption encoder (the Decoder then draws a seeded random caption, as ``pidtrt decode``)."""
    chosen = pid_caption(decoder, prompt, batch)
    return None if chosen.source == "random stand-in" else chosen.embedding


def run_ldm(
    pipe: Any,
    prompt: str | None,
    height: int,
    width: int,
    capture_steps: Sequence[int] | None,
    seed: int = 0,
    *,
    pixels_per_latent: int,
    backbone: str | None = None,
    num_inference_steps: int | None = None,
    **pipe_kwargs: Any,
) -> LdmRun:
    """Run the LDM once for a PiD output of (height, width) pixels and keep its latent after
    each of ``capture_steps`` (None: upstream's recommendation for the run's step count);
    the run stops after the last of them (the remaining steps never run).

    The LDM runs at (height, width) / ``pixels_per_latent`` latent cells (the PiD net's
    :attr:`~pid_trt.config.NetConfig.pixels_per_latent`, see
    :func:`~pid_trt.integrations.ldm.ldm_size`). The pipeline gets ``prompt`` (unless
    ``prompt_embeds`` is in ``pipe_kwargs``), upstream's default ``guidance_scale`` unless
    given, ``generator`` seeded with ``seed`` and ``output_type="latent"``; other
    ``pipe_kwargs`` go to it as they are.
    """
    spec = ldm_spec(backbone) if backbone is not None else ldm_for_pipeline(pipe)
    ldm_h, ldm_w = ldm_size(spec, pixels_per_latent, height, width)
    steps = spec.steps if num_inference_steps is None else num_inference_steps
    wanted = resolve_capture_steps(spec, steps, list(capture_steps or ()))
    capture = EarlyCapture(spec.name, list(wanted))
    device = getattr(pipe, "_execution_device", None) or torch.device("cpu")
    kwargs: dict[str, Any] = {"guidance_scale": spec.guidance}
    if "prompt_embeds" not in pipe_kwargs:
        kwargs["prompt"] = prompt
        if spec.name == "qwenimage":  # upstream runs Qwen-Image with true CFG 4 against " "
            kwargs.update(true_cfg_scale=4.0, negative_prompt=" ")
    kwargs.update(pipe_kwargs)
    kwargs.update(
        height=ldm_h, width=ldm_w, num_inference_steps=steps, output_type="latent",
        generator=torch.Generator(device=device).manual_seed(int(seed)),
        callback_on_step_end=capture, callback_on_step_end_tensor_inputs=["latents"],
    )  # fmt: skip
    start = time.perf_counter()
    with torch.no_grad():
        out = pipe(**kwargs)
    seconds = time.perf_counter() - start
    if capture.captured:
        kept = [(c.step, c.latent, c.sigma) for c in capture.captures]
        missing = sorted(set(wanted) - {c.step for c in capture.captures})
        if missing:
            raise ConfigError(
                f"capture steps {missing}: the {spec.name} pipeline ran {capture.steps} steps and never reached them"
            )
    else:  # a pipeline that never called back: its final latent
        kept = [(wanted[-1], out.images, 0.0)]
    captures = tuple(
        LdmCapture(k, pid_latent(pipe, raw, spec.name, ldm_h, ldm_w), float(sigma)) for k, raw, sigma in kept
    )
    return LdmRun(captures, steps, (ldm_h, ldm_w), spec.name, seconds)


def generate(
    pipe: Any,
    decoder: Decoder,
    prompt: str | None,
    height: int,
    width: int,
    capture_step: int | None = None,
    seed: int = 0,
    *,
    backbone: str | None = None,
    num_inference_steps: int | None = None,
    caption_embedding: Any = None,
    pid_steps: int = 4,
    tiling: TileOptions | None = None,
    **pipe_kwargs: Any,
) -> Generation:
    """Text -> image at (height, width) pixels: the LDM runs at (height, width) / sr_scale
    (rounded up to whole latent cells), stops after ``capture_step`` (default: upstream's
    recommendation for the run's step count), and PiD decodes the captured latent.

    backbone: the LDM name (default: from the pipeline class; Z-Image-Turbo needs
    ``backbone="zimage_turbo"``). num_inference_steps: LDM steps (default upstream's: flux /
    sd3 28, sdxl 30, flux2 / qwenimage / zimage 50, klein 4, zimage_turbo 9). The pipeline
    gets ``prompt`` (unless ``prompt_embeds`` is in ``pipe_kwargs``), upstream's default
    ``guidance_scale`` unless given, ``generator`` seeded with ``seed`` and
    ``output_type="latent"``; other ``pipe_kwargs`` go to it as they are. PiD's caption:
    ``caption_embedding``, else ``prompt`` through the decoder's caption encoder (a
    random-weight stand-in net without one draws a seeded caption). The decode uses ``seed``
    and ``tiling`` (a :class:`~pid_trt.tiling.TileOptions`; None: the decoder's defaults).
    Several captures of one run: :func:`run_ldm`.
    """
    spec = ldm_spec(backbone) if backbone is not None else ldm_for_pipeline(pipe)
    config = decoder.config
    check_decoder_fits(config, spec)
    ldm_size(spec, config.pixels_per_latent, height, width)
    steps = spec.steps if num_inference_steps is None else num_inference_steps
    step = (
        default_capture_step(spec, steps) if capture_step is None else check_capture_step(capture_step, steps)
    )
    run = run_ldm(
        pipe, prompt, height, width, [step], seed, pixels_per_latent=config.pixels_per_latent,
        backbone=spec.name, num_inference_steps=steps, **pipe_kwargs,
    )  # fmt: skip
    kept = run.captures[-1]
    latent, sigma = kept.latent, kept.sigma
    batch = int(latent.shape[0])
    if caption_embedding is not None:
        caption, source = caption_embedding, "file"
    else:
        chosen = pid_caption(decoder, prompt, batch, seed)
        caption, source = chosen.embedding, chosen.source
    image = decoder.decode(
        latent,
        caption,
        degrade_sigma=sigma,
        seed=seed,
        size=(height, width),
        steps=pid_steps,
        tiling=tiling,
    )
    kept_caption = None if source == "random stand-in" else caption
    return Generation(image, latent.cpu(), kept_caption, sigma, step, steps, run.ldm_size, spec.name, source)
