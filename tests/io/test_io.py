"""Latent / noise / image files (DESIGN §3) and atomic writes, on real files in tmp_path."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

import pid_trt.io.images as images_mod
from pid_trt.atomic import TEMP_PREFIX, atomic_write, atomic_write_bytes
from pid_trt.config import TINY, get_preset
from pid_trt.errors import InputFileError, PidTrtError
from pid_trt.io import (
    LatentFile,
    read_latent_file,
    read_noise_file,
    sample_latent,
    to_uint8,
    write_images,
    write_latent_file,
    write_noise_file,
)

T, D, C = TINY.txt_max_length, TINY.txt_embed_dim, TINY.lq_latent_channels


# --------------------------------------------------------------------------- helpers
def raw_safetensors(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    """Write a hand-made safetensors file (header may lie)."""
    blob = json.dumps(header).encode() if not isinstance(header, bytes) else header
    n = len(blob) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + blob + data)
    return path


def good_file(path: Path, batch: int = 2, **overrides) -> Path:
    tensors = {
        "latent": torch.randn(batch, C, 3, 5),
        "caption_embedding": torch.randn(batch, T, D),
        "degrade_sigma": torch.full((batch,), 0.25),
    }
    tensors.update(overrides)
    tensors = {k: v for k, v in tensors.items() if v is not None}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"backbone": "tiny"})
    return path


def expect_error(path: Path, *fragments: str, config=TINY) -> str:
    with pytest.raises(InputFileError) as info:
        read_latent_file(path, config)
    msg = str(info.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


def no_temp_files(directory: Path) -> bool:
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


# --------------------------------------------------------------------------- valid latent files
def test_round_trip_batched(tmp_path):
    lat, cap = torch.randn(2, C, 3, 5), torch.randn(2, T, D)
    sigma = torch.tensor([0.0, 1.0])
    write_latent_file(tmp_path / "l.safetensors", lat, cap, sigma, backbone="flux")
    lf = read_latent_file(tmp_path / "l.safetensors", TINY)
    check_valid(lf, TINY)
    assert (
        torch.equal(lf.latent, lat) and torch.equal(lf.caption, cap) and torch.equal(lf.degrade_sigma, sigma)
    )
    assert lf.backbone == "flux" and lf.batch == 2 and lf.latent_hw == (3, 5)


def test_unbatched_gets_batch_one_and_defaults(tmp_path):
    lat = torch.randn(C, 4, 4)
    write_latent_file(tmp_path / "l.safetensors", lat)
    lf = read_latent_file(tmp_path / "l.safetensors", TINY)
    assert lf.latent.shape == (1, C, 4, 4) and torch.equal(lf.latent[0], lat)
    assert lf.caption is None and lf.backbone is None
    assert torch.equal(lf.degrade_sigma, torch.zeros(1))


def test_unbatched_caption_and_scalar_sigma_broadcast(tmp_path):
    cap = torch.randn(T, D)
    write_latent_file(tmp_path / "l.safetensors", torch.randn(3, C, 2, 2), cap, 0.5)
    lf = read_latent_file(tmp_path / "l.safetensors", TINY)
    assert lf.caption.shape == (3, T, D)
    for b in range(3):
        assert torch.equal(lf.caption[b], cap)
    assert torch.equal(lf.degrade_sigma, torch.full((3,), 0.5))


def test_long_caption_truncated_to_txt_max_length(tmp_path):
    cap = torch.randn(1, T + 5, D)
    write_latent_file(tmp_path / "l.safetensors", torch.randn(1, C, 2, 2), cap)
    lf = read_latent_file(tmp_path / "l.safetensors", TINY)
    assert torch.equal(lf.caption, cap[:, :T])
    # Without a config nothing is truncated.
    assert read_latent_file(tmp_path / "l.safetensors").caption.shape == (1, T + 5, D)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_float_dtypes_converted_to_float32(tmp_path, dtype):
    lat = torch.randn(1, C, 2, 2).to(dtype)
    write_latent_file(
        tmp_path / "l.safetensors", lat, torch.randn(T, D).to(dtype), torch.tensor(0.5, dtype=dtype)
    )
    lf = read_latent_file(tmp_path / "l.safetensors", TINY)
    check_valid(lf, TINY)
    assert torch.equal(lf.latent, lat.to(torch.float32))


def test_no_config_skips_net_checks(tmp_path):
    write_latent_file(tmp_path / "l.safetensors", torch.randn(1, 7, 2, 2), torch.randn(1, 3, 5))
    lf = read_latent_file(tmp_path / "l.safetensors")
    assert lf.latent.shape == (1, 7, 2, 2) and lf.caption.shape == (1, 3, 5)


# --------------------------------------------------------------------------- malformed latent files
def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.safetensors", "nope.safetensors", "not found")


def test_directory(tmp_path):
    expect_error(tmp_path, "directory")


def test_too_short(tmp_path):
    (tmp_path / "s").write_bytes(b"abc")
    expect_error(tmp_path / "s", "3 bytes", "too short")


def test_text_file_is_not_safetensors(tmp_path):
    (tmp_path / "t.safetensors").write_text("hello, this is certainly not a safetensors file\n")
    expect_error(tmp_path / "t.safetensors", "not a safetensors file")


def test_pickle_is_not_safetensors(tmp_path):
    torch.save({"latent": torch.randn(1, C, 2, 2)}, tmp_path / "p.safetensors")
    expect_error(tmp_path / "p.safetensors", "safetensors file")


def test_header_not_json(tmp_path):
    raw_safetensors(tmp_path / "h", b"{not json")
    expect_error(tmp_path / "h", "not valid JSON")


def test_header_not_object(tmp_path):
    raw_safetensors(tmp_path / "h", [1, 2])
    expect_error(tmp_path / "h", "list", "expected an object")


def test_huge_header_length(tmp_path):
    raw_safetensors(tmp_path / "h", {}, length=2**62)
    expect_error(tmp_path / "h", str(2**62), "header length", "not a safetensors file")


def test_header_length_past_end(tmp_path):
    raw_safetensors(tmp_path / "h", {}, length=1000)
    expect_error(tmp_path / "h", "header length 1000 bytes", "truncated")


def test_truncated_file(tmp_path):
    p = good_file(tmp_path / "l.safetensors")
    data = p.read_bytes()
    p.write_bytes(data[:-17])
    expect_error(p, "has data_offsets", "beyond", "truncated")


def test_offsets_past_end(tmp_path):
    hdr = {"latent": {"dtype": "F32", "shape": [1, C, 1, 1], "data_offsets": [0, 4 * C]}}
    raw_safetensors(tmp_path / "h", hdr, b"\0" * 8)
    expect_error(tmp_path / "h", f"[0, {4 * C}]", "8-byte data area")


def test_huge_declared_shape(tmp_path):
    hdr = {"latent": {"dtype": "F32", "shape": [2**31, 2**31, 2**31, 2**31], "data_offsets": [0, 16]}}
    raw_safetensors(tmp_path / "h", hdr, b"\0" * 16)
    expect_error(tmp_path / "h", "needs", "data_offsets give 16")


def test_huge_declared_offsets(tmp_path):
    hdr = {"latent": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 2**42]}}
    raw_safetensors(tmp_path / "h", hdr, b"\0" * 16)
    expect_error(tmp_path / "h", "beyond the 16-byte data area")


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("x", "is not an object"),
        ({"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}, "unknown dtype 'F99'"),
        ({"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}, "non-negative integers"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "non-negative integers"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4]}, "expected [start, end]"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}, "beyond"),
    ],
)
def test_bad_header_entries(tmp_path, spec, fragment):
    raw_safetensors(tmp_path / "h", {"latent": spec}, b"\0" * 8)
    expect_error(tmp_path / "h", "'latent'", fragment)


def test_bad_metadata(tmp_path):
    hdr = {"__metadata__": {"backbone": 3}, "latent": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    raw_safetensors(tmp_path / "h", hdr, b"\0" * 4)
    expect_error(tmp_path / "h", "__metadata__")


def test_missing_latent(tmp_path):
    save_file({"caption_embedding": torch.randn(T, D)}, str(tmp_path / "l"))
    expect_error(tmp_path / "l", "no 'latent' tensor", "'caption_embedding'")


def test_empty_file_header(tmp_path):
    raw_safetensors(tmp_path / "h", {})
    expect_error(tmp_path / "h", "no 'latent' tensor (has none)")


def test_unknown_extra_tensors_named(tmp_path):
    good_file(tmp_path / "l", mask=torch.ones(2), extra=torch.ones(1))
    expect_error(tmp_path / "l", "unknown tensor(s) 'extra', 'mask'")


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("latent", torch.randn(C, 4), "latent has shape [16, 4], expected [B, C, h, w] or [C, h, w]"),
        ("latent", torch.randn(1, 1, C, 2, 2), "latent has shape [1, 1, 16, 2, 2]"),
        (
            "caption_embedding",
            torch.randn(D),
            "caption_embedding has shape [32], expected [B, T, D] or [T, D]",
        ),
        ("degrade_sigma", torch.zeros(2, 1), "degrade_sigma has shape [2, 1], expected [B] or a scalar"),
    ],
)
def test_wrong_rank(tmp_path, key, value, fragment):
    good_file(tmp_path / "l", **{key: value})
    expect_error(tmp_path / "l", fragment)


def test_channel_mismatch(tmp_path):
    good_file(tmp_path / "l", latent=torch.randn(2, 4, 3, 5))
    expect_error(tmp_path / "l", "latent has 4 channels, expected 16")


def test_channel_mismatch_real_preset(tmp_path):
    good_file(tmp_path / "l", latent=torch.randn(2, 16, 3, 5), caption_embedding=None)
    expect_error(tmp_path / "l", "expected 128", config=get_preset("flux2").config)


@pytest.mark.parametrize("key", ["latent", "caption_embedding", "degrade_sigma"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite(tmp_path, key, bad):
    value = {"latent": torch.randn(2, C, 3, 5), "caption_embedding": torch.randn(2, T, D),
             "degrade_sigma": torch.full((2,), 0.25)}[key]  # fmt: skip
    value.view(-1)[-1] = bad
    good_file(tmp_path / "l", **{key: value})
    expect_error(tmp_path / "l", f"'{key}'", "1 NaN/Inf")


def test_float64_overflowing_float32_is_refused(tmp_path):
    good_file(tmp_path / "l", latent=torch.full((1, C, 1, 1), 1e300, dtype=torch.float64), caption_embedding=None,
              degrade_sigma=None)  # fmt: skip
    expect_error(tmp_path / "l", "NaN/Inf", "float32")


@pytest.mark.parametrize(
    "key, value, name",
    [
        ("latent", torch.ones(2, C, 3, 5, dtype=torch.int64), "I64"),
        ("latent", torch.ones(2, C, 3, 5, dtype=torch.bool), "BOOL"),
        ("caption_embedding", torch.ones(2, T, D, dtype=torch.int32), "I32"),
        ("degrade_sigma", torch.zeros(2, dtype=torch.uint8), "U8"),
    ],
)
def test_non_float_dtype(tmp_path, key, value, name):
    good_file(tmp_path / "l", **{key: value})
    expect_error(tmp_path / "l", f"'{key}' has dtype {name}", "expected a float tensor")


@pytest.mark.parametrize(
    "key, value",
    [
        ("latent", torch.randn(0, C, 3, 5)),
        ("latent", torch.randn(C, 0, 5)),
        ("caption_embedding", torch.randn(0, D)),
        ("degrade_sigma", torch.zeros(0)),
    ],
)
def test_empty_tensor(tmp_path, key, value):
    good_file(tmp_path / "l", **{key: value})
    expect_error(tmp_path / "l", key, "zero dimension (empty tensor)")


@pytest.mark.parametrize("sigma", [[0.5, 1.5], [-0.1, 0.0]])
def test_sigma_out_of_range(tmp_path, sigma):
    good_file(tmp_path / "l", degrade_sigma=torch.tensor(sigma))
    bad = next(s for s in sigma if not 0 <= s <= 1)
    msg = expect_error(tmp_path / "l", "degrade_sigma", "outside [0, 1]")
    assert str(bad)[:4] in msg


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("caption_embedding", torch.randn(3, T, D), "caption_embedding has batch 3 but latent has batch 2"),
        ("degrade_sigma", torch.zeros(1), "degrade_sigma has batch 1 but latent has batch 2"),
        ("degrade_sigma", torch.zeros(3), "degrade_sigma has batch 3"),
    ],
)
def test_batch_mismatch(tmp_path, key, value, fragment):
    good_file(tmp_path / "l", **{key: value})
    expect_error(tmp_path / "l", fragment, "expected equal batch sizes")


def test_batch_mismatch_unbatched_latent(tmp_path):
    good_file(tmp_path / "l", latent=torch.randn(C, 3, 5))
    expect_error(tmp_path / "l", "caption_embedding has batch 2 but latent has batch 1")


def test_caption_wrong_width(tmp_path):
    good_file(tmp_path / "l", caption_embedding=torch.randn(2, T, D + 1))
    expect_error(tmp_path / "l", f"width {D + 1}, expected {D}")


def test_caption_too_short(tmp_path):
    good_file(tmp_path / "l", caption_embedding=torch.randn(2, T - 1, D))
    expect_error(tmp_path / "l", f"{T - 1} tokens", f"txt_max_length={T}")


# --------------------------------------------------------------------------- sample_latent
def test_sample_latent_deterministic_and_valid(tmp_path):
    a = sample_latent(TINY, batch=2, height=64, width=96, seed=3)
    b = sample_latent(TINY, batch=2, height=64, width=96, seed=3)
    c = sample_latent(TINY, batch=2, height=64, width=96, seed=4)
    assert torch.equal(a.latent, b.latent) and torch.equal(a.caption, b.caption)
    assert not torch.equal(a.latent, c.latent)
    assert a.latent.shape == (2, C, 2, 3) and a.caption.shape == (2, T, D)
    assert TINY.output_size(*a.latent_hw) == (64, 96)
    check_valid(a, TINY)
    # It survives a file round trip.
    write_latent_file(tmp_path / "s", a.latent, a.caption, a.degrade_sigma)
    assert torch.equal(read_latent_file(tmp_path / "s", TINY).latent, a.latent)


def test_sample_latent_default_size():
    cfg = get_preset("flux2").config
    s = sample_latent(cfg)
    h, w = cfg.output_size(*s.latent_hw)
    assert h == w and h >= 256 and h % cfg.pixels_per_latent == 0
    with pytest.raises(ValueError):
        sample_latent(TINY, batch=0)


# --------------------------------------------------------------------------- noise files
def test_noise_round_trip(tmp_path):
    noise = torch.randn(4, 2, 3, 8, 16)
    write_noise_file(tmp_path / "n", noise)
    out = read_noise_file(tmp_path / "n", steps=4, batch=2, height=8, width=16)
    assert len(out) == 4 and all(torch.equal(o, n) for o, n in zip(out, noise, strict=True))
    write_noise_file(tmp_path / "n2", list(noise.to(torch.float16)))
    out = read_noise_file(tmp_path / "n2", 4, 2, 8, 16)
    assert out[0].dtype == torch.float32 and torch.equal(out[1], noise[1].half().float())


@pytest.mark.parametrize("args", [(3, 2, 8, 16), (4, 1, 8, 16), (4, 2, 16, 16), (4, 2, 8, 8)])
def test_noise_shape_mismatch(tmp_path, args):
    write_noise_file(tmp_path / "n", torch.randn(4, 2, 3, 8, 16))
    with pytest.raises(InputFileError, match=r"noise has shape \[4, 2, 3, 8, 16\], expected .*= \[" + ", ".join(
            map(str, (args[0], args[1], 3, args[2], args[3])))):  # fmt: skip
        read_noise_file(tmp_path / "n", *args)


def test_noise_bad_contents(tmp_path):
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


# --------------------------------------------------------------------------- image outputs
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


def test_png_channels_and_layout(tmp_path):
    img = torch.rand(1, 3, 5, 7) * 2 - 1
    write_images(img, tmp_path / "o.png")
    assert np.array_equal(_read_png(tmp_path / "o.png"), to_uint8(img)[0].numpy())
    # The red channel of pixel (row 4, col 6) is image[0, 0, 4, 6].
    assert _read_png(tmp_path / "o.png")[4, 6, 0] == math.floor((img[0, 0, 4, 6].double().item() + 1) * 127.5)


def test_png_batch_names(tmp_path):
    img = torch.rand(3, 3, 4, 4) * 2 - 1
    paths = write_images(img, tmp_path / "out.png")
    assert paths == [tmp_path / f"out_{k}.png" for k in range(3)]
    assert not (tmp_path / "out.png").exists()
    for k, p in enumerate(paths):
        assert np.array_equal(_read_png(p), to_uint8(img)[k].numpy())


def test_safetensors_output_round_trip(tmp_path):
    img = torch.rand(2, 3, 4, 6, dtype=torch.float64) * 2.4 - 1.2
    assert write_images(img, tmp_path / "o.safetensors") == [tmp_path / "o.safetensors"]
    out = load_file(str(tmp_path / "o.safetensors"))
    assert list(out) == ["image"] and out["image"].dtype == torch.float32
    assert torch.equal(out["image"], img.float().clamp(-1, 1))


@pytest.mark.parametrize("name", ["o.jpg", "o", "o.pt", "o.png.bak"])
def test_unsupported_suffix(tmp_path, name):
    with pytest.raises(InputFileError, match=r"unsupported suffix .*expected one of \.png, \.safetensors"):
        write_images(torch.zeros(1, 3, 2, 2), tmp_path / name)
    assert not any(tmp_path.iterdir())


def test_bad_image_tensors(tmp_path):
    with pytest.raises(ValueError, match=r"\[1, 4, 2, 2\]"):
        write_images(torch.zeros(1, 4, 2, 2), tmp_path / "o.png")
    with pytest.raises(PidTrtError, match="NaN"):
        write_images(torch.full((1, 3, 2, 2), math.nan), tmp_path / "o.png")
    assert not any(tmp_path.iterdir())


def test_png_write_failure_keeps_existing_file(tmp_path, monkeypatch):
    target = tmp_path / "o.png"
    target.write_bytes(b"old content")

    def failing_save(self, fp, format=None, **kw):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(InputFileError, match="o.png: write failed \\(No space left on device\\)"):
        write_images(torch.zeros(1, 3, 2, 2), target)
    assert target.read_bytes() == b"old content"
    assert no_temp_files(tmp_path) and sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]


def test_safetensors_write_failure_keeps_existing_file(tmp_path, monkeypatch):
    target = tmp_path / "o.safetensors"
    target.write_bytes(b"old content")

    def failing(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(images_mod, "save_file", failing)
    with pytest.raises(InputFileError, match="write failed"):
        write_images(torch.zeros(1, 3, 2, 2), target)
    assert target.read_bytes() == b"old content" and no_temp_files(tmp_path)


def test_png_batch_failure_names_image(tmp_path, monkeypatch):
    calls = []
    real_save = Image.Image.save

    def save(self, fp, format=None, **kw):
        calls.append(fp)
        if len(calls) == 2:
            raise OSError(13, "Permission denied")
        return real_save(self, fp, format=format, **kw)

    (tmp_path / "o_1.png").write_bytes(b"old")
    monkeypatch.setattr(Image.Image, "save", save)
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


def test_missing_output_directory(tmp_path):
    with pytest.raises(InputFileError, match="write failed"):
        write_images(torch.zeros(1, 3, 2, 2), tmp_path / "no" / "o.png")


# --------------------------------------------------------------------------- atomic_write
def test_atomic_write_success_and_replace(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(TEMP_PREFIX) and not tmp.exists()
        tmp.write_bytes(b"two")
        assert target.read_bytes() == b"one"  # not visible before the block ends
    assert target.read_bytes() == b"two" and no_temp_files(tmp_path)


def test_atomic_write_failure_cleans_up(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and no_temp_files(tmp_path)


def test_atomic_write_nothing_written(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_write(tmp_path / "f.bin"):
        pass
    assert not any(tmp_path.iterdir())


def test_atomic_write_replace_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def failing_replace(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and no_temp_files(tmp_path)


def test_latent_and_noise_writers_are_atomic(tmp_path, monkeypatch):
    import pid_trt.io.latent as latent_mod

    target = tmp_path / "l.safetensors"
    target.write_bytes(b"old")

    def failing(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(latent_mod, "save_file", failing)
    with pytest.raises(OSError):
        write_latent_file(target, torch.zeros(1, C, 1, 1))
    assert target.read_bytes() == b"old" and no_temp_files(tmp_path)


# --------------------------------------------------------------------------- properties
_SETTINGS = settings(
    max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _read_or_refuse(path: Path) -> None:
    """read_latent_file either returns a valid LatentFile or raises InputFileError, nothing else."""
    for config in (None, TINY):
        try:
            lf = read_latent_file(path, config)
        except InputFileError as exc:
            assert "\n" not in str(exc)
        else:
            check_valid(lf, config)


@_SETTINGS
@given(data=st.binary(max_size=512))
def test_random_bytes_never_crash(tmp_path, data):
    p = tmp_path / "r.safetensors"
    p.write_bytes(data)
    _read_or_refuse(p)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
_entry = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "BOOL", "F8_E4M3", "U16", "X"]) | _json,
        "shape": st.lists(st.integers(-1, 20), max_size=5) | _json,
        "data_offsets": st.lists(st.integers(-1, 3000), min_size=2, max_size=2) | _json,
    }
)
_header = st.dictionaries(
    st.sampled_from(["latent", "caption_embedding", "degrade_sigma", "__metadata__", "other"]),
    _entry | _json,
    max_size=4,
)


@_SETTINGS
@given(header=_header, data=st.binary(max_size=3000))
def test_random_headers_never_crash(tmp_path, header, data):
    p = tmp_path / "h.safetensors"
    raw_safetensors(p, json.dumps(header, allow_nan=True).encode(), data)
    _read_or_refuse(p)


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory) -> bytes:
    p = tmp_path_factory.mktemp("valid") / "v.safetensors"
    write_latent_file(
        p, torch.randn(2, C, 2, 3), torch.randn(2, T, D), torch.tensor([0.1, 0.9]), backbone="tiny"
    )
    return p.read_bytes()


@_SETTINGS
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    cut=st.none() | st.integers(0, 10**6),
)
def test_mutated_valid_files_never_crash(tmp_path, valid_bytes, flips, cut):
    data = bytearray(valid_bytes)
    # Concentrate half of the mutations on the header, where they do the most damage.
    header_end = 8 + struct.unpack("<Q", valid_bytes[:8])[0]
    for i, (pos, value) in enumerate(flips):
        data[pos % (header_end if i % 2 else len(data))] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    p = tmp_path / "m.safetensors"
    p.write_bytes(bytes(data))
    _read_or_refuse(p)


def test_latent_file_is_frozen():
    lf = sample_latent(TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        lf.backbone = "x"  # type: ignore[misc]
