"""Noise files (docs/design.md, file formats): round trip, and refusals naming the expected shape."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from pid_trt.errors import InputFileError
from pid_trt.io import read_noise_file, write_noise_file


def test_noise_file_round_trips_and_reads_as_float32(tmp_path):
    noise = torch.randn(4, 2, 3, 8, 16)
    write_noise_file(tmp_path / "n", noise)
    out = read_noise_file(tmp_path / "n", steps=4, batch=2, height=8, width=16)
    assert len(out) == 4 and all(torch.equal(o, n) for o, n in zip(out, noise, strict=True))
    write_noise_file(tmp_path / "n2", list(noise.to(torch.float16)))
    out = read_noise_file(tmp_path / "n2", 4, 2, 8, 16)
    assert out[0].dtype == torch.float32 and torch.equal(out[1], noise[1].half().float())


@pytest.mark.parametrize("args", [(3, 2, 8, 16), (4, 1, 8, 16), (4, 2, 16, 16), (4, 2, 8, 8)])
def test_noise_of_the_wrong_shape_is_refused_naming_the_expected_shape(tmp_path, args):
    write_noise_file(tmp_path / "n", torch.randn(4, 2, 3, 8, 16))
    with pytest.raises(InputFileError, match=r"noise has shape \[4, 2, 3, 8, 16\], expected .*= \[" + ", ".join(
            map(str, (args[0], args[1], 3, args[2], args[3])))):  # fmt: skip
        read_noise_file(tmp_path / "n", *args)


def test_noise_file_with_extra_tensors_int_dtype_nan_or_no_file_is_refused(tmp_path):
    save_file({"noise": torch.randn(1, 1, 3, 2, 2), "x": torch.ones(1)}, str(tmp_path / "a"))
    with pytest.raises(InputFileError, match="'noise', 'x'; expected exactly one"):
        read_noise_file(tmp_path / "a", 1, 1, 2, 2)
    save_file({"noise": torch.ones(1, 1, 3, 2, 2, dtype=torch.int8)}, str(tmp_path / "b"))
    with pytest.raises(InputFileError, match="dtype I8"):
        read_noise_file(tmp_path / "b", 1, 1, 2, 2)
    n = torch.randn(1, 1, 3, 2, 2)
    n[0, 0, 1, 1, 1] = math.nan
    save_file({"noise": n}, str(tmp_path / "c"))
    with pytest.raises(InputFileError, match="NaN"):
        read_noise_file(tmp_path / "c", 1, 1, 2, 2)
    with pytest.raises(InputFileError, match="not found"):
        read_noise_file(tmp_path / "missing", 1, 1, 2, 2)
