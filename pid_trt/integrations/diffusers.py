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
- :class:`EarlyCapture`: a ``callback_on_step_end`` that keeps the latent after step K and
  stops the pipeline there.
- :func:`generate`: prompt -> LDM at size / sr_scale -> capture -> PiD decode.
- :func:`encode_image` (from :mod:`pid_trt.integrations.vae`): image -> PiD latent.

diffusers is imported inside the functions that need it; this module imports without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pid_trt.errors import ConfigError
from pid_trt.integrations.latents import pid_latent, to_pid_frame
from pid_trt.integrations.ldm import (
    check_capture_step,
    check_decoder_fits,
    default_capture_step,
    ldm_for_pipeline,
    ldm_spec,
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

__all__ = [
    "EarlyCapture",
    "Generation",
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
    "to_pid_frame",
    "vae_to_pid",
]


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
class EarlyCapture:
    """``callback_on_step_end`` that keeps the latent after step K and stops the pipeline.

    Indexing: diffusers calls the callback after loop iteration i (0-based), once the
    scheduler step has moved the latent from ``scheduler.sigmas[i]`` to ``sigmas[i + 1]``.
    "After step K" (1-based, upstream's ``--save_xt_steps K``) is therefore iteration
    i = K - 1, and the latent then sits at ``sigmas[K]``: that is the ``degrade_sigma`` kept
    (after :func:`to_pid_frame`, which also rescales SDXL's latent). K = the step count is
    the final latent (sigma 0 for the flow schedulers). After the capture the callback sets
    ``pipe._interrupt = True``: the pipelines skip every remaining iteration (no transformer
    call), so the LDM costs K steps.

    capture_step None picks :func:`~pid_trt.integrations.ldm.default_capture_step` for the
    run's step count (read from the scheduler at the run's first step; one object may serve
    several runs, each capture replacing the last). After the run:
    ``latent`` (as the pipeline held it: packed for flux / flux2 / qwenimage; feed it to
    :func:`pid_latent`), ``sigma`` (float), ``step`` (K), ``steps`` (the run's count).
    Pass it with ``callback_on_step_end_tensor_inputs=["latents"]`` (the default).
    """

    tensor_inputs = ["latents"]

    def __init__(self, backbone: str, capture_step: int | None = None) -> None:
        self.spec = ldm_spec(backbone)
        if capture_step is not None and (
            isinstance(capture_step, bool) or not isinstance(capture_step, int) or capture_step < 1
        ):
            raise ConfigError(
                f"capture step {capture_step!r}: expected an integer >= 1 (or None: the default)"
            )
        self.capture_step = capture_step
        self.latent: torch.Tensor | None = None
        self.sigma: float | None = None
        self.step: int | None = None
        self.steps: int | None = None
        self.scheduler_sigma: float | None = None

    @property
    def captured(self) -> bool:
        return self.latent is not None

    def _resolve(self, pipe: Any) -> int:
        steps = len(pipe.scheduler.timesteps) // getattr(pipe.scheduler, "order", 1)
        self.steps = steps
        if self.capture_step is None:
            return default_capture_step(self.spec, steps)
        return check_capture_step(self.capture_step, steps)

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        if step_index == 0 or self.step is None:  # a new run (the object may be reused)
            self.latent = self.sigma = self.scheduler_sigma = None
            self.step = self._resolve(pipe)
        if step_index == self.step - 1 and self.latent is None:
            sigmas = pipe.scheduler.sigmas
            self.scheduler_sigma = float(sigmas[min(self.step, len(sigmas) - 1)])
            latent = callback_kwargs["latents"].detach().clone()
            self.latent, self.sigma = to_pid_frame(latent, self.scheduler_sigma, self.spec.name)
            if self.step < (self.steps or 0):
                pipe._interrupt = True  # the loop `continue`s through the remaining steps
        return callback_kwargs


# ---------------------------------------------------------------------------------- generate
@dataclass(frozen=True)
class Generation:
    """What :func:`generate` made.

    image: [B, 3, H, W] float32 in [-1, 1]; latent: the PiD latent [B, C, h, w] decoded;
    caption: the caption embedding used ([B, T, D]), or None when a random-weight stand-in
    net drew its own; degrade_sigma: the latent's noise level; step / steps: captured after
    step K of N; ldm_size: (height, width) the LDM ran at; backbone: the LDM name.
    """

    image: torch.Tensor
    latent: torch.Tensor
    caption: torch.Tensor | None
    degrade_sigma: float
    step: int
    steps: int
    ldm_size: tuple[int, int]
    backbone: str


def _caption(decoder: Any, prompt: Any, batch: int) -> torch.Tensor | None:
    """The prompt's caption embedding, or None for a random-weight stand-in net that has no
    caption encoder (the Decoder then draws a seeded random caption, as ``pidtrt decode``)."""
    if prompt is None or (not decoder.spec.needs_caption and not decoder.has_text_encoder):
        return None
    return decoder.encode_prompts(prompt, batch)


def generate(
    pipe: Any,
    decoder: Any,
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
    random-weight stand-in net without one draws a seeded caption). The decode uses ``seed``.
    """
    spec = ldm_spec(backbone) if backbone is not None else ldm_for_pipeline(pipe)
    config = decoder.config
    check_decoder_fits(config, spec)
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 16 or value % 16:
            raise ConfigError(f"{name}={value!r}: expected a positive multiple of 16 (output pixels)")
    p = config.pixels_per_latent
    cells_h, cells_w = -(-height // p), -(-width // p)
    if spec.name != "sdxl" and spec.packing != "flux2" and (cells_h % 2 or cells_w % 2):
        raise ConfigError(
            f"size {width}x{height}: {spec.name} works on pairs of latent cells, so the output needs "
            f"{2 * -(-cells_w // 2)}x{2 * -(-cells_h // 2)} cells of {p} pixels; pick width and height that "
            f"round up to an even number of {p}-pixel cells (e.g. multiples of {2 * p})"
        )
    ldm_h, ldm_w = cells_h * spec.down, cells_w * spec.down
    steps = spec.steps if num_inference_steps is None else num_inference_steps
    step = (
        default_capture_step(spec, steps) if capture_step is None else check_capture_step(capture_step, steps)
    )

    capture = EarlyCapture(spec.name, step)
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
    with torch.no_grad():
        out = pipe(**kwargs)
    if capture.captured:
        raw, sigma = capture.latent, float(capture.sigma)
    else:  # a pipeline that never called back: its final latent
        raw, sigma = out.images, 0.0
    latent = pid_latent(pipe, raw, spec.name, ldm_h, ldm_w)
    batch = int(latent.shape[0])
    caption = caption_embedding if caption_embedding is not None else _caption(decoder, prompt, batch)
    image = decoder.decode(
        latent, caption, degrade_sigma=sigma, seed=seed, size=(height, width), steps=pid_steps
    )
    return Generation(image, latent.cpu(), caption, sigma, step, steps, (ldm_h, ldm_w), spec.name)
