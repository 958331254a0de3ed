"""Shared by the tests of latent files, images and atomic writes (and the latent-file fuzz)."""

from __future__ import annotations

from pathlib import Path

import torch

from pid_trt.atomic import TEMP_PREFIX
from pid_trt.config import TINY
from pid_trt.io import LatentFile

T, D, C = TINY.txt_max_length, TINY.txt_embed_dim, TINY.lq_latent_channels


def no_temp_files(directory: Path) -> bool:
    """True when ``directory`` holds no temp file of pid_trt.atomic."""
    return not [p for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX)]


def check_valid(lf: LatentFile, config=None) -> None:
    """Invariants of anything read_latent_file returns."""
    assert lf.latent.dim() == 4 and lf.latent.dtype == torch.float32
    b = lf.batch
    assert b >= 1 and lf.latent.numel() > 0
    assert torch.isfinite(lf.latent).all()
    assert lf.degrade_sigma.shape == (b,) and lf.degrade_sigma.dtype == torch.float32
    assert ((lf.degrade_sigma >= 0) & (lf.degrade_sigma <= 1)).all()
    if lf.caption is not None:
        assert lf.caption.dim() == 3 and lf.caption.shape[0] == b and lf.caption.dtype == torch.float32
        assert torch.isfinite(lf.caption).all()
    if config is not None:
        assert lf.latent.shape[1] == config.lq_latent_channels
        if lf.caption is not None:
            assert lf.caption.shape[1:] == (config.txt_max_length, config.txt_embed_dim)


def failing_save_file(errno: int, message: str):
    """A stand-in for ``safetensors.torch.save_file`` that writes part of the file, then fails
    as a full or broken disk does (``OSError(errno, message)``)."""

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno, message)

    return save_file
