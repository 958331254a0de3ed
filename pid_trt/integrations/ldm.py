"""The latent diffusion models PiD decodes, as facts: latent layout, frame, step defaults.

One :class:`LdmSpec` per LDM name (``pid/ARCHITECTURE.md`` §1.3, §2.3, §3.3; step and capture
defaults from upstream's README table "Suggested step settings per diffusers backbone" and
its pipeline registry). No diffusers import here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pid_trt.config import Backbone, NetConfig
from pid_trt.errors import ConfigError


@dataclass(frozen=True)
class LdmSpec:
    """What one LDM hands PiD.

    name: canonical LDM name (``flux``, ``flux2``, ``flux2_klein``, ``sd3``, ``sdxl``,
    ``qwenimage``, ``zimage``, ``zimage_turbo``); backbone: the PiD preset family that decodes
    it; channels / down: the PiD latent's channels and pixels per latent cell at the LDM's
    resolution (flux2: 128 channels at 1/16 after the 2x2 patchify); packing: how the
    pipeline's ``output_type="latent"`` is laid out (``flux`` [B, seq, 4C], ``flux2`` [B, seq,
    128] by position ids, ``qwenimage`` [B, seq, 4C] with a time axis, or None: already
    [B, C, h, w]); variance_preserving: the PiD net was trained on VP-noised latents (SDXL),
    else the flow form; steps: upstream's default ``num_inference_steps``; capture: the
    recommended capture step at ``steps`` (None: the final latent); guidance: upstream's
    default ``guidance_scale``; pipelines: diffusers pipeline class names of this LDM.
    """

    name: str
    backbone: Backbone
    channels: int
    down: int
    packing: str | None
    variance_preserving: bool
    steps: int
    capture: int | None
    guidance: float
    pipelines: tuple[str, ...]


_SPECS = {
    s.name: s
    for s in (
        LdmSpec("flux", Backbone.FLUX, 16, 8, "flux", False, 28, 24, 3.5, ("FluxPipeline",)),
        LdmSpec("flux2", Backbone.FLUX2, 128, 16, "flux2", False, 50, 46, 4.0, ("Flux2Pipeline",)),
        # FLUX.2-klein: same VAE and PiD as flux2; a distilled 4-step model whose final latent
        # is the recommended one. Its pipeline returns the raw [B, 32, H/8, W/8] latent.
        LdmSpec(
            "flux2_klein", Backbone.FLUX2, 128, 16, "flux2", False, 4, None, 1.0, ("Flux2KleinPipeline",)
        ),
        LdmSpec("sd3", Backbone.SD3, 16, 8, None, False, 28, 24, 4.0, ("StableDiffusion3Pipeline",)),
        LdmSpec("sdxl", Backbone.SDXL, 4, 8, None, True, 30, 26, 7.5, ("StableDiffusionXLPipeline",)),
        LdmSpec(
            "qwenimage", Backbone.QWENIMAGE, 16, 8, "qwenimage", False, 50, 44, 4.0, ("QwenImagePipeline",)
        ),
        LdmSpec("zimage", Backbone.ZIMAGE, 16, 8, None, False, 50, 46, 5.0, ("ZImagePipeline",)),
        # Z-Image-Turbo: same pipeline class as zimage; 9 steps (8 non-zero sigmas), final latent.
        LdmSpec("zimage_turbo", Backbone.ZIMAGE_TURBO, 16, 8, None, False, 9, None, 0.0, ()),
    )
}

# Upstream's other tags for the same latent (its backbone-tag spelling uses dashes).
_ALIASES = {
    "flux2_klein_4b": "flux2_klein",
    "flux2_klein_9b": "flux2_klein",
    "qwenimage_2512": "qwenimage",
}


def ldm_names() -> tuple[str, ...]:
    """The LDM names :func:`ldm_spec` knows (upstream's other tags aside), in table order."""
    return tuple(_SPECS)


def ldm_spec(name: str | Backbone) -> LdmSpec:
    """The :class:`LdmSpec` of an LDM name (``zimage-turbo`` and upstream's tags such as
    ``flux2-klein-4b`` or ``qwenimage-2512`` are accepted); ConfigError for anything else."""
    key = name.value if isinstance(name, Backbone) else str(name)
    key = key.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    spec = _SPECS.get(key)
    if spec is None:
        if key in (Backbone.DINOV2.value, Backbone.SIGLIP.value):
            raise ConfigError(
                f"backbone {name!r}: the DINOv2 / SigLIP representation autoencoders are not diffusers "
                f"pipelines and are out of scope here; expected one of {', '.join(_SPECS)}"
            )
        raise ConfigError(
            f"backbone {name!r} is not a diffusers LDM PiD decodes: expected one of {', '.join(_SPECS)}"
        )
    return spec


def ldm_for_pipeline(pipe: object) -> LdmSpec:
    """The LDM of a diffusers pipeline object, by its class name (Z-Image gives ``zimage``:
    name ``zimage_turbo`` yourself for the turbo model's defaults)."""
    return ldm_for_class_name(type(pipe).__name__)


def ldm_for_class_name(cls: str) -> LdmSpec:
    """The LDM of a diffusers pipeline class name (e.g. ``FluxPipeline``, as a pipeline
    folder's ``model_index.json`` names it); ConfigError for a class of no LDM here."""
    for spec in _SPECS.values():
        if cls in spec.pipelines:
            return spec
    raise ConfigError(
        f"pipeline {cls}: cannot tell which LDM it is; pass backbone= one of {', '.join(_SPECS)}"
    )


def default_capture_step(spec: LdmSpec, steps: int) -> int:
    """The capture step K for a run of ``steps`` LDM steps: upstream's recommendation
    (flux / sd3 24 of 28, sdxl 26 of 30, flux2 46 of 50, qwenimage 44 of 50, zimage 46 of
    50; klein and zimage_turbo their final latent), scaled to ``steps`` when the run has
    another step count (round(K * steps / default), within 1..steps)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"num_inference_steps={steps!r}: expected an integer >= 1")
    if spec.capture is None:
        return steps
    if steps == spec.steps:
        return spec.capture
    return min(steps, max(1, round(spec.capture * steps / spec.steps)))


def resolve_capture_steps(
    spec: LdmSpec, steps: int, requested: Sequence[int] = (), final: bool = False
) -> tuple[int, ...]:
    """The capture steps of a ``steps``-step run, ascending, each once: ``requested`` (each
    checked by :func:`check_capture_step`), plus ``steps`` (the final latent) when ``final``;
    :func:`default_capture_step` alone when neither is given."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"num_inference_steps={steps!r}: expected an integer >= 1")
    chosen = {check_capture_step(k, steps) for k in requested}
    if final:
        chosen.add(steps)
    if not chosen:
        chosen.add(default_capture_step(spec, steps))
    return tuple(sorted(chosen))


def ldm_size(spec: LdmSpec, pixels_per_latent: int, height: int, width: int) -> tuple[int, int]:
    """(height, width) in pixels the LDM runs at for a PiD output of (height, width): the
    output / ``pixels_per_latent`` rounded up to whole latent cells, times the LDM's down
    factor. ConfigError for an output that is not a positive multiple of 16, or (flux, sd3,
    qwenimage, zimage: latents packed in 2x2 cells) an odd number of cells."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 16 or value % 16:
            raise ConfigError(f"{name}={value!r}: expected a positive multiple of 16 (output pixels)")
    p = pixels_per_latent
    cells_h, cells_w = -(-height // p), -(-width // p)
    if spec.name != "sdxl" and spec.packing != "flux2" and (cells_h % 2 or cells_w % 2):
        raise ConfigError(
            f"size {width}x{height}: {spec.name} works on pairs of latent cells, so the output needs "
            f"{2 * -(-cells_w // 2)}x{2 * -(-cells_h // 2)} cells of {p} pixels; pick width and height that "
            f"round up to an even number of {p}-pixel cells (e.g. multiples of {2 * p})"
        )
    return cells_h * spec.down, cells_w * spec.down


def check_capture_step(step: int, steps: int) -> int:
    """``step`` as a valid capture step of a ``steps``-step run (1..steps), or ConfigError."""
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= steps:
        raise ConfigError(
            f"capture step {step!r}: expected an integer in 1..{steps} (the latent after that many of the "
            f"{steps} LDM steps; {steps} = the final latent)"
        )
    return step


def check_decoder_fits(config: NetConfig, spec: LdmSpec) -> None:
    """ConfigError unless a PiD net of ``config`` takes this LDM's latent (channels, down factor)."""
    if config.lq_latent_channels != spec.channels or config.latent_spatial_down_factor != spec.down:
        raise ConfigError(
            f"the PiD net takes {config.lq_latent_channels}-channel latents at 1/{config.latent_spatial_down_factor}, "
            f"but {spec.name} gives {spec.channels} channels at 1/{spec.down}: pick the {spec.backbone.value} "
            "preset or a net config with those latent_channels / latent_spatial_down_factor"
        )
