"""``pidtrt sample-latent``: write a seeded random latent file for a preset (no downloads)."""

from __future__ import annotations

from pathlib import Path

import typer

from pid_trt.buckets import parse_size
from pid_trt.cli.errors import cli_errors
from pid_trt.cli.options import CkptType


@cli_errors
def sample_latent(
    output: Path = typer.Option(..., "-o", "--output", help="Latent file to write (.safetensors)."),
    backbone: str = typer.Option("tiny", "--backbone", help="Preset whose latent shape to use."),
    ckpt_type: CkptType = None,
    size: str | None = typer.Option(None, "--size", help="Output size WxH in pixels (default 256x256)."),
    batch: int = typer.Option(1, "--batch", min=1, help="Batch size B."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random latent and caption."),
    no_caption: bool = typer.Option(False, "--no-caption", help="Leave out caption_embedding."),
) -> None:
    """Write a random latent (and caption embedding) of the preset's shape."""
    from pid_trt.config import get_preset
    from pid_trt.io import sample_latent as make
    from pid_trt.io import write_latent_file

    preset = get_preset(backbone, ckpt_type)
    height = width = None
    if size is not None:
        height, width = parse_size(size)
    lat = make(
        preset.config, batch=batch, height=height, width=width, seed=seed, backbone=preset.backbone.value
    )
    write_latent_file(
        output, lat.latent, None if no_caption else lat.caption, lat.degrade_sigma, lat.backbone
    )
    h, w = preset.config.output_size(*lat.latent_hw)
    typer.echo(f"wrote {output}: latent {list(lat.latent.shape)} -> {w}x{h} output ({preset.name})")
