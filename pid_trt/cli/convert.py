"""``pidtrt convert``: released .pth -> safetensors carrying its net config."""

from __future__ import annotations

from pathlib import Path

import typer

from pid_trt.cli.errors import cli_errors
from pid_trt.cli.options import (
    Backbone,
    CkptType,
    NetConfigFile,
)
from pid_trt.config import get_preset
from pid_trt.errors import ConfigError
from pid_trt.netspec import read_net_config


@cli_errors
def convert(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to convert (.pth as released, or .safetensors)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output .safetensors file."),
    backbone: Backbone = None,
    ckpt_type: CkptType = None,
    net_config: NetConfigFile = None,
) -> None:
    """Strictly load a checkpoint and write it as safetensors with its net config in the metadata,
    so later commands need neither --backbone nor --net-config."""
    from pid_trt.checkpoints import convert_checkpoint

    if output.suffix != ".safetensors":
        raise ConfigError(f"-o {output}: expected a .safetensors file name")
    if backbone is not None and net_config is not None:
        raise ConfigError("--backbone and --net-config exclude each other: pass one")
    config = None
    if backbone is not None:
        config = get_preset(backbone, ckpt_type).config
    elif net_config is not None:
        config = read_net_config(net_config)
    loaded = convert_checkpoint(checkpoint, output, config)
    size_mb = output.stat().st_size / 2**20
    typer.echo(
        f"wrote {output} ({len(loaded.state_dict)} tensors, {loaded.num_params / 1e6:.1f} M params, "
        f"{loaded.dtype_summary}, {size_mb:.1f} MiB); sha256 of the source {loaded.sha256[:16]}..."
    )
