"""Noise files (docs/design.md §3): pre-drawn sampler noise, for bit-reproducible decodes across backends.

One tensor ``noise`` [S, B, 3, H, W]: ``noise[0]`` is the initial noise, ``noise[i]`` the
re-noise draw after step i.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from pid_trt.atomic import atomic_write
from pid_trt.errors import InputFileError
from pid_trt.io.stfile import check_finite, load_float_tensors, open_input, require_only_tensor
from pid_trt.quoting import printable
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
    what = f"noise file {printable(path)}"
    expected = [steps, batch, 3, height, width]
    with open_input(path, what) as f:
        header = read_header_from(f, what, InputFileError)
        require_only_tensor(header, NOISE_KEY, what)
        _check_shape(list(header.tensors[NOISE_KEY].shape), expected, what)
        noise = load_float_tensors(f, header, [NOISE_KEY], what)[NOISE_KEY]
    return list(noise.unbind(0))


def noise_from_tensors(
    noise: Sequence[Any], steps: int, batch: int, height: int, width: int, what: str = "noise"
) -> list[torch.Tensor]:
    """In-memory draws (a sequence of S tensors / arrays [B, 3, H, W], or one [S, B, 3, H, W])
    checked by the rules of :func:`read_noise_file`; returns ``steps`` CPU float32 tensors."""
    expected = [steps, batch, 3, height, width]
    try:
        if isinstance(noise, (torch.Tensor, np.ndarray)):
            stacked = torch.as_tensor(noise)
        else:
            stacked = torch.stack([torch.as_tensor(d) for d in noise])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputFileError(f"{what}: expected a list of {steps} tensors [B, 3, H, W] ({exc})") from None
    _check_shape(list(stacked.shape), expected, what)
    if not stacked.is_floating_point():
        raise InputFileError(f"{what}: dtype {stacked.dtype}, expected a float tensor")
    stacked = check_finite(stacked.detach().to("cpu", torch.float32), NOISE_KEY, what)
    return list(stacked.unbind(0))


def _check_shape(shape: list[int], expected: list[int], what: str) -> None:
    if shape != expected:
        raise InputFileError(f"{what}: noise has shape {shape}, expected [S, B, 3, H, W] = {expected}")


def write_noise_file(path: str | os.PathLike[str], noise: torch.Tensor | Sequence[torch.Tensor]) -> None:
    """Write a noise file atomically: ``noise`` [S, B, 3, H, W], or a sequence of S [B, 3, H, W]."""
    if not isinstance(noise, torch.Tensor):
        noise = torch.stack(list(noise))
    with atomic_write(path) as tmp:
        save_file({NOISE_KEY: noise.detach().cpu().contiguous()}, os.fspath(tmp))
