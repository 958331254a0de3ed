"""Typer options shared by several commands; they resolve through :mod:`pid_trt.netspec`."""

from __future__ import annotations

import typer

from pid_trt.config import Backbone, CkptType, get_preset
from pid_trt.errors import ConfigError
from pid_trt.netspec import WEIGHTS_HINT, NetSpec, build_model, resolve_net

__all__ = ["WEIGHTS_HINT", "NetSpec", "build_model", "resolve_net", "backbone_enum", "ckpt_enum"]

BackboneOpt = typer.Option(
    None,
    "--backbone",
    help="Preset: flux, zimage, zimage_turbo, flux2, sd3, sdxl, qwenimage, dinov2, siglip, tiny, small.",
)
CkptTypeOpt = typer.Option(
    None, "--ckpt-type", help="Checkpoint type: 2k or 2kto4k (default: 2k where it exists)."
)
CheckpointOpt = typer.Option(None, "--checkpoint", help="PiD checkpoint (.pth as released, or .safetensors).")
NetConfigOpt = typer.Option(None, "--net-config", help="JSON file of upstream PidNet keyword arguments.")
RandomWeightsOpt = typer.Option(
    False, "--random-weights", help="Seeded random weights for smoke tests and timing (images mean nothing)."
)
WeightsSeedOpt = typer.Option(0, "--weights-seed", help="Seed of --random-weights.")
TextEncoderOpt = typer.Option(
    None,
    "--text-encoder",
    help="Local Gemma-2-2B-it directory for --prompt (default: $PIDTRT_TEXT_ENCODER).",
)
TextDtypeOpt = typer.Option(
    None, "--text-dtype", help="Caption encoder precision: fp32 or bf16 (default: bf16 on cuda, fp32 on cpu)."
)


def backbone_enum(text: str | None) -> Backbone | None:
    """Validate a --backbone value early (for commands that only need the name)."""
    if text is None:
        return None
    return get_preset(text).backbone


def ckpt_enum(text: str | None) -> CkptType | None:
    if text is None:
        return None
    try:
        return CkptType(text)
    except ValueError:
        raise ConfigError(f"--ckpt-type {text!r}: expected 2k or 2kto4k") from None
