"""Noise files (DESIGN §3): pre-drawn sampler noise, for bit-reproducible decodes across backends.

One tensor ``noise`` [S, B, 3, H, W]: ``noise[0]`` is the initial noise, ``noise[i]`` the
re-noise draw after step i.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from safetensors.torch import save_file

from pid_trt.atomic import atomic_write
from pid_trt.errors import InputFileError
from pid_trt.io.stfile import load_float_tensors, open_input
from pid_trt.safetensors_header import read_header_from

NOISE_KEY = "noise"


def read_noise_file(
    path: str | os.PathLike[str], steps: int, batch: int, height: int, width: int
) -> list[torch.Tensor]:
    """Read a noise file for a decode of ``steps`` steps, batch B, output height x width pixels.

    Returns ``steps`` tensors, each [B, 3, H, W] float32. Refuses (InputFileError) anything
    but exactly one float tensor ``noise`` of shape [steps, batch, 3, height, width] with
    finite values.
    """
    what = f"noise file {os.fspath(path)}"
    expected = [steps, batch, 3, height, width]
    with open_input(path, what) as f:
        header = read_header_from(f, what, InputFileError)
        names = list(header.tensors)
        if names != [NOISE_KEY]:
            raise InputFileError(
                f"{what}: has tensor(s) {', '.join(map(repr, names)) or 'none'}; expected exactly one, 'noise'"
            )
        shape = list(header.tensors[NOISE_KEY].shape)
        if shape != expected:
            raise InputFileError(f"{what}: noise has shape {shape}, expected [S, B, 3, H, W] = {expected}")
        noise = load_float_tensors(f, header, [NOISE_KEY], what)[NOISE_KEY]
    return list(noise.unbind(0))


def write_noise_file(path: str | os.PathLike[str], noise: torch.Tensor | Sequence[torch.Tensor]) -> None:
    """Write a noise file atomically: ``noise`` [S, B, 3, H, W], or a sequence of S [B, 3, H, W]."""
    if not isinstance(noise, torch.Tensor):
        noise = torch.stack(list(noise))
    with atomic_write(path) as tmp:
        save_file({NOISE_KEY: noise.detach().cpu().contiguous()}, os.fspath(tmp))
