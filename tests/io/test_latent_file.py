"""Latent files (docs/design.md, file formats): what a valid file reads as, and every malformed
file refused with one line naming the file and what was expected; real files in tmp_path."""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pid_trt.config import TINY, get_preset
from pid_trt.errors import InputFileError
from pid_trt.io import read_latent_file, sample_latent, write_latent_file
from tests.io.helpers import C, D, T, check_valid, failing_save_file, no_temp_files


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


# --------------------------------------------------------------------------- valid latent files
def test_latent_file_round_trips_latent_caption_sigma_and_backbone(tmp_path):
    lat, cap = torch.randn(2, C, 3, 5), torch.randn(2, T, D)
    sigma = torch.tensor([0.0, 1.0])
    write_latent_file(tmp_path / "l.safetensors", lat, cap, sigma, backbone="flux")
    lf = read_latent_file(tmp_path / "l.safetensors", TINY)
    check_valid(lf, TINY)
    assert (
        torch.equal(lf.latent, lat) and torch.equal(lf.caption, cap) and torch.equal(lf.degrade_sigma, sigma)
    )
    assert lf.backbone == "flux" and lf.batch == 2 and lf.latent_hw == (3, 5)


def test_unbatched_latent_reads_as_batch_one_without_caption_at_sigma_zero(tmp_path):
    lat = torch.randn(C, 4, 4)
    write_latent_file(tmp_path / "l.safetensors", lat)
    lf = read_latent_file(tmp_path / "l.safetensors", TINY)
    assert lf.latent.shape == (1, C, 4, 4) and torch.equal(lf.latent[0], lat)
    assert lf.caption is None and lf.backbone is None
    assert torch.equal(lf.degrade_sigma, torch.zeros(1))


def test_unbatched_caption_and_scalar_sigma_broadcast_over_the_batch(tmp_path):
    cap = torch.randn(T, D)
    write_latent_file(tmp_path / "l.safetensors", torch.randn(3, C, 2, 2), cap, 0.5)
    lf = read_latent_file(tmp_path / "l.safetensors", TINY)
    assert lf.caption.shape == (3, T, D)
    for b in range(3):
        assert torch.equal(lf.caption[b], cap)
    assert torch.equal(lf.degrade_sigma, torch.full((3,), 0.5))


def test_caption_longer_than_txt_max_length_is_truncated_given_a_config(tmp_path):
    cap = torch.randn(1, T + 5, D)
    write_latent_file(tmp_path / "l.safetensors", torch.randn(1, C, 2, 2), cap)
    lf = read_latent_file(tmp_path / "l.safetensors", TINY)
    assert torch.equal(lf.caption, cap[:, :T])
    # Without a config nothing is truncated.
    assert read_latent_file(tmp_path / "l.safetensors").caption.shape == (1, T + 5, D)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_float_tensors_of_any_width_read_as_float32(tmp_path, dtype):
    lat = torch.randn(1, C, 2, 2).to(dtype)
    write_latent_file(
        tmp_path / "l.safetensors", lat, torch.randn(T, D).to(dtype), torch.tensor(0.5, dtype=dtype)
    )
    lf = read_latent_file(tmp_path / "l.safetensors", TINY)
    check_valid(lf, TINY)
    assert torch.equal(lf.latent, lat.to(torch.float32))


def test_reading_without_a_config_skips_the_network_shape_checks(tmp_path):
    write_latent_file(tmp_path / "l.safetensors", torch.randn(1, 7, 2, 2), torch.randn(1, 3, 5))
    lf = read_latent_file(tmp_path / "l.safetensors")
    assert lf.latent.shape == (1, 7, 2, 2) and lf.caption.shape == (1, 3, 5)


# --------------------------------------------------------------------------- malformed latent files
def test_missing_latent_file_is_refused_naming_it(tmp_path):
    expect_error(tmp_path / "nope.safetensors", "nope.safetensors", "not found")


def test_latent_file_that_is_a_directory_is_refused(tmp_path):
    expect_error(tmp_path, "directory")


def test_file_shorter_than_the_length_prefix_is_refused(tmp_path):
    (tmp_path / "s").write_bytes(b"abc")
    expect_error(tmp_path / "s", "3 bytes", "too short")


def test_text_file_is_refused_as_not_safetensors(tmp_path):
    (tmp_path / "t.safetensors").write_text("hello, this is certainly not a safetensors file\n")
    expect_error(tmp_path / "t.safetensors", "not a safetensors file")


def test_torch_pickle_is_refused_as_not_safetensors(tmp_path):
    torch.save({"latent": torch.randn(1, C, 2, 2)}, tmp_path / "p.safetensors")
    expect_error(tmp_path / "p.safetensors", "safetensors file")


def test_header_that_is_not_json_is_refused(tmp_path):
    raw_safetensors(tmp_path / "h", b"{not json")
    expect_error(tmp_path / "h", "not valid JSON")


def test_header_that_is_not_a_json_object_is_refused(tmp_path):
    raw_safetensors(tmp_path / "h", [1, 2])
    expect_error(tmp_path / "h", "list", "expected an object")


def test_header_length_of_2pow62_is_refused(tmp_path):
    raw_safetensors(tmp_path / "h", {}, length=2**62)
    expect_error(tmp_path / "h", str(2**62), "header length", "not a safetensors file")


def test_header_length_past_the_end_of_the_file_is_refused_as_truncated(tmp_path):
    raw_safetensors(tmp_path / "h", {}, length=1000)
    expect_error(tmp_path / "h", "header length 1000 bytes", "truncated")


def test_truncated_data_area_is_refused(tmp_path):
    p = good_file(tmp_path / "l.safetensors")
    data = p.read_bytes()
    p.write_bytes(data[:-17])
    expect_error(p, "has data_offsets", "beyond", "truncated")


def test_data_offsets_past_the_data_area_are_refused(tmp_path):
    hdr = {"latent": {"dtype": "F32", "shape": [1, C, 1, 1], "data_offsets": [0, 4 * C]}}
    raw_safetensors(tmp_path / "h", hdr, b"\0" * 8)
    expect_error(tmp_path / "h", f"[0, {4 * C}]", "8-byte data area")


def test_shape_larger_than_its_data_offsets_is_refused(tmp_path):
    hdr = {"latent": {"dtype": "F32", "shape": [2**31, 2**31, 2**31, 2**31], "data_offsets": [0, 16]}}
    raw_safetensors(tmp_path / "h", hdr, b"\0" * 16)
    expect_error(tmp_path / "h", "needs", "data_offsets give 16")


def test_data_offsets_of_2pow42_in_a_small_file_are_refused(tmp_path):
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
def test_malformed_tensor_entry_is_refused_naming_the_tensor(tmp_path, spec, fragment):
    raw_safetensors(tmp_path / "h", {"latent": spec}, b"\0" * 8)
    expect_error(tmp_path / "h", "'latent'", fragment)


def test_non_string_metadata_value_is_refused(tmp_path):
    hdr = {"__metadata__": {"backbone": 3}, "latent": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    raw_safetensors(tmp_path / "h", hdr, b"\0" * 4)
    expect_error(tmp_path / "h", "__metadata__")


def test_file_without_a_latent_tensor_is_refused_listing_what_it_holds(tmp_path):
    save_file({"caption_embedding": torch.randn(T, D)}, str(tmp_path / "l"))
    expect_error(tmp_path / "l", "no 'latent' tensor", "'caption_embedding'")


def test_empty_header_is_refused_as_holding_no_latent(tmp_path):
    raw_safetensors(tmp_path / "h", {})
    expect_error(tmp_path / "h", "no 'latent' tensor (has none)")


def test_unknown_extra_tensors_are_refused_by_name(tmp_path):
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
def test_tensor_of_the_wrong_rank_is_refused_with_the_expected_shapes(tmp_path, key, value, fragment):
    good_file(tmp_path / "l", **{key: value})
    expect_error(tmp_path / "l", fragment)


def test_latent_with_the_wrong_channel_count_is_refused(tmp_path):
    good_file(tmp_path / "l", latent=torch.randn(2, 4, 3, 5))
    expect_error(tmp_path / "l", "latent has 4 channels, expected 16")


def test_latent_channels_are_checked_against_a_released_preset(tmp_path):
    good_file(tmp_path / "l", latent=torch.randn(2, 16, 3, 5), caption_embedding=None)
    expect_error(tmp_path / "l", "expected 128", config=get_preset("flux2").config)


@pytest.mark.parametrize("key", ["latent", "caption_embedding", "degrade_sigma"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_in_any_tensor_is_refused(tmp_path, key, bad):
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
def test_integer_or_bool_tensor_is_refused_as_not_float(tmp_path, key, value, name):
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
def test_tensor_with_a_zero_dimension_is_refused(tmp_path, key, value):
    good_file(tmp_path / "l", **{key: value})
    expect_error(tmp_path / "l", key, "zero dimension (empty tensor)")


@pytest.mark.parametrize("sigma", [[0.5, 1.5], [-0.1, 0.0]])
def test_degrade_sigma_outside_0_1_is_refused(tmp_path, sigma):
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
def test_tensors_with_different_batch_sizes_are_refused(tmp_path, key, value, fragment):
    good_file(tmp_path / "l", **{key: value})
    expect_error(tmp_path / "l", fragment, "expected equal batch sizes")


def test_unbatched_latent_with_a_batched_caption_is_refused(tmp_path):
    good_file(tmp_path / "l", latent=torch.randn(C, 3, 5))
    expect_error(tmp_path / "l", "caption_embedding has batch 2 but latent has batch 1")


def test_caption_of_the_wrong_width_is_refused(tmp_path):
    good_file(tmp_path / "l", caption_embedding=torch.randn(2, T, D + 1))
    expect_error(tmp_path / "l", f"width {D + 1}, expected {D}")


def test_caption_shorter_than_txt_max_length_is_refused(tmp_path):
    good_file(tmp_path / "l", caption_embedding=torch.randn(2, T - 1, D))
    expect_error(tmp_path / "l", f"{T - 1} tokens", f"txt_max_length={T}")


# --------------------------------------------------------------------------- sample_latent
def test_sample_latent_is_seeded_valid_and_survives_a_file_round_trip(tmp_path):
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


def test_sample_latent_defaults_to_a_square_image_and_refuses_batch_0():
    cfg = get_preset("flux2").config
    s = sample_latent(cfg)
    h, w = cfg.output_size(*s.latent_hw)
    assert h == w and h >= 256 and h % cfg.pixels_per_latent == 0
    with pytest.raises(ValueError):
        sample_latent(TINY, batch=0)


# --------------------------------------------------------------------------- writing
def test_failed_latent_write_keeps_the_old_file(tmp_path, monkeypatch):
    import pid_trt.io.latent as latent_mod

    target = tmp_path / "l.safetensors"
    target.write_bytes(b"old")
    monkeypatch.setattr(latent_mod, "save_file", failing_save_file(28, "No space left on device"))
    with pytest.raises(OSError):
        write_latent_file(target, torch.zeros(1, C, 1, 1))
    assert target.read_bytes() == b"old" and no_temp_files(tmp_path)


def test_latent_file_is_frozen():
    lf = sample_latent(TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        lf.backbone = "x"  # type: ignore[misc]
