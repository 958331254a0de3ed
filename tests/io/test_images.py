"""Image outputs: the PNG writer's pixel formula and layout, batch names, the safetensors image
output, and failed writes that keep the old file (docs/design.md, file formats)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import pid_trt.io.images as images_mod
from pid_trt.errors import InputFileError, PidTrtError
from pid_trt.io import to_uint8, write_images
from tests.io.helpers import failing_save_file, no_temp_files


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im).copy()


def test_png_values_follow_floor_formula(tmp_path):
    values = torch.tensor([-1.0, 1.0, 0.0, -0.5, 0.5, 2.0, -3.0, 0.999, -0.999, -0.99])
    img = values.view(1, 1, 1, -1).expand(1, 3, 2, -1).contiguous()
    assert write_images(img, tmp_path / "o.png") == [tmp_path / "o.png"]
    px = _read_png(tmp_path / "o.png")
    assert px.shape == (2, values.numel(), 3) and px.dtype == np.uint8
    expected = [0, 255, 127, 63, 191, 255, 0, 254, 0, 1]
    assert px[0, :, 0].tolist() == expected
    ref = np.floor((np.clip(values.double().numpy(), -1, 1) + 1) * 127.5).astype(np.uint8)
    assert px[1, :, 2].tolist() == ref.tolist()


def test_png_is_rgb_with_rows_then_columns_then_channels(tmp_path):
    img = torch.rand(1, 3, 5, 7) * 2 - 1
    write_images(img, tmp_path / "o.png")
    assert np.array_equal(_read_png(tmp_path / "o.png"), to_uint8(img)[0].numpy())
    # The red channel of pixel (row 4, col 6) is image[0, 0, 4, 6].
    assert _read_png(tmp_path / "o.png")[4, 6, 0] == math.floor((img[0, 0, 4, 6].double().item() + 1) * 127.5)


def test_batch_of_pngs_is_named_with_an_index_suffix(tmp_path):
    img = torch.rand(3, 3, 4, 4) * 2 - 1
    paths = write_images(img, tmp_path / "out.png")
    assert paths == [tmp_path / f"out_{k}.png" for k in range(3)]
    assert not (tmp_path / "out.png").exists()
    for k, p in enumerate(paths):
        assert np.array_equal(_read_png(p), to_uint8(img)[k].numpy())


def test_safetensors_image_output_is_float32_clamped_to_minus1_1(tmp_path):
    img = torch.rand(2, 3, 4, 6, dtype=torch.float64) * 2.4 - 1.2
    assert write_images(img, tmp_path / "o.safetensors") == [tmp_path / "o.safetensors"]
    out = load_file(str(tmp_path / "o.safetensors"))
    assert list(out) == ["image"] and out["image"].dtype == torch.float32
    assert torch.equal(out["image"], img.float().clamp(-1, 1))


@pytest.mark.parametrize("name", ["o.bmp", "o", "o.pt", "o.png.bak"])
def test_output_with_an_unsupported_suffix_is_refused_writing_nothing(tmp_path, name):
    with pytest.raises(
        InputFileError,
        match=r"unsupported suffix .*expected one of \.png, \.jpg, \.jpeg, \.webp, \.safetensors",
    ):
        write_images(torch.zeros(1, 3, 2, 2), tmp_path / name)
    assert not any(tmp_path.iterdir())


def test_image_without_3_channels_or_with_nan_is_refused_writing_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"\[1, 4, 2, 2\]"):
        write_images(torch.zeros(1, 4, 2, 2), tmp_path / "o.png")
    with pytest.raises(PidTrtError, match="NaN"):
        write_images(torch.full((1, 3, 2, 2), math.nan), tmp_path / "o.png")
    assert not any(tmp_path.iterdir())


def test_png_write_failure_keeps_existing_file(tmp_path, monkeypatch):
    target = tmp_path / "o.png"
    target.write_bytes(b"old content")

    real_write = Path.write_bytes

    def failing_write(self, data):
        real_write(self, b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", failing_write)
    with pytest.raises(InputFileError, match="o.png: write failed \\(No space left on device\\)"):
        write_images(torch.zeros(1, 3, 2, 2), target)
    assert target.read_bytes() == b"old content"
    assert no_temp_files(tmp_path) and sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]


def test_safetensors_write_failure_keeps_existing_file(tmp_path, monkeypatch):
    target = tmp_path / "o.safetensors"
    target.write_bytes(b"old content")
    monkeypatch.setattr(images_mod, "save_file", failing_save_file(5, "Input/output error"))
    with pytest.raises(InputFileError, match="write failed"):
        write_images(torch.zeros(1, 3, 2, 2), target)
    assert target.read_bytes() == b"old content" and no_temp_files(tmp_path)


def test_png_batch_failure_names_the_image_and_keeps_the_others(tmp_path, monkeypatch):
    calls = []
    real_write = Path.write_bytes

    def write(self, data):
        calls.append(self)
        if len(calls) == 2:
            raise OSError(13, "Permission denied")
        return real_write(self, data)

    (tmp_path / "o_1.png").write_bytes(b"old")
    monkeypatch.setattr(Path, "write_bytes", write)
    with pytest.raises(InputFileError) as info:
        write_images(torch.zeros(3, 3, 2, 2), tmp_path / "o.png")
    msg = str(info.value)
    assert (
        "1 of 3 images not written: image 1" in msg
        and "o_1.png" in msg
        and "written: o_0.png, o_2.png" in msg
    )
    assert (tmp_path / "o_0.png").is_file() and (tmp_path / "o_1.png").read_bytes() == b"old"
    assert (tmp_path / "o_2.png").is_file() and no_temp_files(tmp_path)  # nothing decoded is lost


def test_output_into_a_missing_folder_is_refused_as_a_failed_write(tmp_path):
    with pytest.raises(InputFileError, match="write failed"):
        write_images(torch.zeros(1, 3, 2, 2), tmp_path / "no" / "o.png")
