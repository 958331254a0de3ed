"""What ``pidtrt verify`` decodes: the user's latent files, or seeded random latents."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pid_trt.verify.pairs import VerifyInput

if TYPE_CHECKING:
    from pid_trt.netspec import NetSpec


def verify_inputs(
    spec: NetSpec, latents: list[Path], res: int | None, size: str | None, seeds: int, batch: int
) -> list[VerifyInput]:
    """The inputs of one verify run: each latent file x ``seeds`` noise seeds, or ``seeds``
    seeded random latents of ``batch`` rows at ``res`` / ``size``. A latent file without a
    caption gets a stand-in one only where the net needs none (:attr:`NetSpec.needs_caption`)."""
    from pid_trt.backends.base import Conditioning
    from pid_trt.buckets import output_size, parse_bucket
    from pid_trt.errors import ConfigError, InputFileError
    from pid_trt.io import read_latent_file, sample_latent
    from pid_trt.netspec import stand_in_caption

    config = spec.config
    out = []
    if latents:
        if res is not None:
            raise ConfigError(
                "--res with --latents: the latent fixes the size (use --size for in-between sizes)"
            )
        for path in latents:
            lat = read_latent_file(path, config)
            height, width = output_size(config, lat.latent_hw, size)
            caption = lat.caption
            if caption is None:
                if spec.needs_caption:
                    raise InputFileError(
                        f"latent file {path} has no caption_embedding: add one as tensor `caption_embedding` "
                        f"[B, {config.txt_max_length}, {config.txt_embed_dim}]"
                    )
                caption = stand_in_caption(spec, lat.batch, 0)
            cond = Conditioning(lat.latent, caption, lat.degrade_sigma, height, width)
            out += [VerifyInput(f"{Path(path).name} seed {s}", cond, s) for s in range(seeds)]
        return out
    if res is None and size is None:
        raise ConfigError("give --res N, --size WxH or --latents FILE: what to decode")
    bucket = parse_bucket(res, size)
    for s in range(seeds):
        lat = sample_latent(config, batch, bucket.height, bucket.width, seed=s)
        assert lat.caption is not None  # a sampled latent always has its caption
        cond = Conditioning(lat.latent, lat.caption, lat.degrade_sigma, bucket.height, bucket.width)
        out.append(VerifyInput(f"random latent seed {s}", cond, s))
    return out
