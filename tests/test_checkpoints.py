"""Strict checkpoint loading and conversion on real TINY files (.pth and .safetensors)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pid_trt.checkpoints import (
    CONFIG_METADATA_KEY,
    FORMAT_METADATA_KEY,
    FORMAT_VERSION,
    convert_checkpoint,
    expected_shapes,
    load_checkpoint,
    load_into,
)
from pid_trt.config import TINY, all_presets
from pid_trt.errors import CheckpointError
from pid_trt.model import PidNet
from pid_trt.verify.inventory import inventory_entry, inventory_shapes, matching_experiments


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    """A random TINY state dict in bf16 (like the release), keys without ``net.``."""
    torch.manual_seed(0)
    model = PidNet(TINY)
    out = {}
    for k, v in model.state_dict().items():
        out[k] = (torch.randn_like(v, dtype=torch.float32) if v.is_floating_point() else v).to(torch.bfloat16)
    return out


def _net(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"net.{k}": v for k, v in state.items()}


def _save_pth(path, state):
    torch.save(_net(state), path)
    return path


def _assert_same(loaded_state, state):
    assert set(loaded_state) == set(state)
    for k, v in state.items():
        assert loaded_state[k].dtype == v.dtype, k
        assert torch.equal(loaded_state[k], v), k


def test_expected_shapes_match_a_real_model():
    model = PidNet(TINY)
    assert expected_shapes(TINY) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert all(not k.startswith("net.") for k in expected_shapes(TINY))


def test_load_release_style_pth(tmp_path, tiny_state):
    path = _save_pth(tmp_path / "model_ema_bf16.pth", tiny_state)
    loaded = load_checkpoint(path, TINY)
    _assert_same(loaded.state_dict, tiny_state)
    assert loaded.config == TINY
    assert loaded.dtypes == {"bfloat16": len(tiny_state)}
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.num_params == sum(v.numel() for v in tiny_state.values())
    assert "bfloat16" in loaded.dtype_summary()


def test_load_legacy_non_zip_pth(tmp_path, tiny_state):
    path = tmp_path / "legacy.pth"
    torch.save(_net(tiny_state), path, _use_new_zipfile_serialization=False)
    _assert_same(load_checkpoint(path, TINY).state_dict, tiny_state)


@pytest.mark.parametrize("prefixed", [True, False])
def test_load_safetensors_with_or_without_prefix(tmp_path, tiny_state, prefixed):
    path = tmp_path / "w.safetensors"
    save_file(_net(tiny_state) if prefixed else tiny_state, str(path))
    _assert_same(load_checkpoint(path, TINY).state_dict, tiny_state)


def test_file_without_config_needs_one(tmp_path, tiny_state):
    path = _save_pth(tmp_path / "w.pth", tiny_state)
    with pytest.raises(CheckpointError, match="--net-config.*--backbone"):
        load_checkpoint(path, None)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth", TINY)


def _error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, TINY)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_missing_keys_named_and_counted(tmp_path, tiny_state, fmt):
    state = dict(tiny_state)
    gone = sorted(state)[:2]
    for k in gone:
        del state[k]
    path = tmp_path / f"w.{fmt}"
    _save_pth(path, state) if fmt == "pth" else save_file(_net(state), str(path))
    msg = _error(path)
    assert "2 missing" in msg and all(k in msg for k in gone)
    assert "unexpected" not in msg and "wrong shape" not in msg


@pytest.mark.parametrize(
    "extra", ["net_ema.x", "fake_score.net.w", "discriminator.head.weight", "net.extra.bias"]
)
def test_unexpected_key_is_not_skipped(tmp_path, tiny_state, extra):
    raw = _net(tiny_state)
    raw[extra] = torch.zeros(3, dtype=torch.bfloat16)
    path = tmp_path / "w.pth"
    torch.save(raw, path)
    msg = _error(path)
    assert "1 unexpected" in msg and extra.removeprefix("net.") in msg


def test_wrong_shape_named_with_both_shapes(tmp_path, tiny_state):
    state = dict(tiny_state)
    key = "pixel_embedder.proj.weight"
    good = tuple(state[key].shape)
    state[key] = torch.zeros(good[0] + 1, *good[1:], dtype=torch.bfloat16)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    msg = _error(path)
    assert f"1 wrong shape ({key} [{good[0] + 1}" in msg and f"expected {list(good)}" in msg


def test_all_three_kinds_in_one_line_with_counts(tmp_path, tiny_state):
    state = dict(tiny_state)
    missing = sorted(state)[:5]
    for k in missing:
        del state[k]
    state["net_ema.a"] = torch.zeros(1, dtype=torch.bfloat16)
    state["y_pos_embedding"] = torch.zeros(1, 1, 1, dtype=torch.bfloat16)
    path = _save_pth(tmp_path / "w.pth", state)
    msg = _error(path)
    assert "5 missing" in msg and ", ..." in msg and missing[0] in msg and missing[4] not in msg
    assert "1 unexpected (net_ema.a)" in msg and "1 wrong shape (y_pos_embedding [1, 1, 1]" in msg
    assert "nothing was loaded" in msg


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_non_floating_tensor_refused(tmp_path, tiny_state, fmt):
    state = dict(tiny_state)
    state["y_pos_embedding"] = torch.zeros(state["y_pos_embedding"].shape, dtype=torch.int64)
    path = tmp_path / f"w.{fmt}"
    _save_pth(path, state) if fmt == "pth" else save_file(state, str(path))
    msg = _error(path)
    assert "y_pos_embedding" in msg and ("int64" in msg or "I64" in msg) and "floating" in msg


def test_non_tensor_values_and_non_dict_refused(tmp_path, tiny_state):
    raw = _net(tiny_state)
    raw["net.step"] = 5
    torch.save(raw, tmp_path / "a.pth")
    assert "'net.step' is a int" in _error(tmp_path / "a.pth")
    torch.save(list(tiny_state.values()), tmp_path / "b.pth")
    assert "holds a list" in _error(tmp_path / "b.pth")
    torch.save({"state_dict": _net(tiny_state)}, tmp_path / "c.pth")
    assert "is a dict" in _error(tmp_path / "c.pth")


def test_same_key_with_and_without_prefix_refused(tmp_path, tiny_state):
    raw = _net(tiny_state)
    raw["y_pos_embedding"] = tiny_state["y_pos_embedding"]
    torch.save(raw, tmp_path / "w.pth")
    assert "both with and without" in _error(tmp_path / "w.pth")


def test_convert_round_trip_config_from_metadata(tmp_path, tiny_state):
    src = _save_pth(tmp_path / "model_ema_bf16.pth", tiny_state)
    dst = tmp_path / "out" / "w.safetensors"
    dst.parent.mkdir()
    convert_checkpoint(src, dst, TINY)
    assert sorted(p.name for p in dst.parent.iterdir()) == ["w.safetensors"]  # no temp file left
    with safe_open(str(dst), framework="pt") as f:
        meta = f.metadata()
        assert not any(k.startswith("net.") for k in f.keys())  # noqa: SIM118 (safe_open is not iterable)
    assert meta[FORMAT_METADATA_KEY] == FORMAT_VERSION
    assert json.loads(meta[CONFIG_METADATA_KEY]) == json.loads(TINY.to_json())
    loaded = load_checkpoint(dst, None)
    assert loaded.config == TINY
    _assert_same(loaded.state_dict, tiny_state)
    assert loaded.dtypes == {"bfloat16": len(tiny_state)}
    # and a converted file converts again to identical tensors without a config
    again = convert_checkpoint(dst, tmp_path / "again.safetensors")
    _assert_same(again.state_dict, tiny_state)


def test_convert_keeps_aliased_tensors_apart(tmp_path, tiny_state):
    state = dict(tiny_state)
    a, b = [k for k in sorted(state) if state[k].shape == state["pixel_embedder.proj.bias"].shape][:2]
    state[b] = state[a]  # two names, one storage (as a pickle of tied weights would have)
    src = _save_pth(tmp_path / "w.pth", state)
    out = convert_checkpoint(src, tmp_path / "w.safetensors", TINY)
    _assert_same(out.state_dict, state)


def test_convert_of_bad_source_writes_nothing(tmp_path, tiny_state):
    state = dict(tiny_state)
    state.pop("y_pos_embedding")
    src = _save_pth(tmp_path / "w.pth", state)
    dst = tmp_path / "w.safetensors"
    with pytest.raises(CheckpointError, match="1 missing"):
        convert_checkpoint(src, dst, TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth"]


def test_converted_file_with_other_config_refused(tmp_path, tiny_state):
    src = _save_pth(tmp_path / "w.pth", tiny_state)
    dst = tmp_path / "w.safetensors"
    convert_checkpoint(src, dst, TINY)
    other = dataclasses.replace(TINY, rope_ref_h=2048)  # same shapes, different net
    with pytest.raises(CheckpointError, match="rope_ref_h=2048"):
        load_checkpoint(dst, other)
    assert load_checkpoint(dst, TINY).config == TINY


def test_bad_config_in_metadata_refused(tmp_path, tiny_state):
    path = tmp_path / "w.safetensors"
    save_file(tiny_state, str(path), metadata={CONFIG_METADATA_KEY: '{"hidden_size": -1}'})
    with pytest.raises(CheckpointError, match=f"{CONFIG_METADATA_KEY}.*hidden_size"):
        load_checkpoint(path, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_into_casts_to_model_dtype(tmp_path, tiny_state, dtype):
    loaded = load_checkpoint(_save_pth(tmp_path / "w.pth", tiny_state), TINY)
    model = PidNet(TINY).to(dtype)
    assert load_into(model, loaded) is model
    got = model.state_dict()
    for k, v in tiny_state.items():
        assert got[k].dtype == dtype
        assert torch.equal(got[k], v.to(dtype)), k


def test_load_into_wrong_model_refused(tmp_path, tiny_state):
    loaded = load_checkpoint(_save_pth(tmp_path / "w.pth", tiny_state), TINY)
    other = PidNet(dataclasses.replace(TINY, patch_depth=2))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_into(other, loaded)


@pytest.mark.parametrize("preset", [p for p in all_presets() if p.released], ids=lambda p: p.name)
def test_released_preset_shapes_equal_inventory(preset):
    entry = inventory_entry(preset.experiment)
    want = inventory_shapes(preset.experiment)
    got = expected_shapes(preset.config)
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert {k: v for k, v in got.items() if want[k] != v} == {}
    assert len(got) == entry["num_keys"]
    # and the layout names its experiment back (a layout shared by several releases names them all)
    assert preset.experiment in matching_experiments(got)
    assert preset.experiment in matching_experiments({f"net.{k}": v for k, v in got.items()})


def test_matching_experiments_none_for_other_layouts():
    assert matching_experiments(expected_shapes(TINY)) == []
    released = next(p for p in all_presets() if p.released)
    shapes = expected_shapes(released.config)
    shapes.pop(sorted(shapes)[0])
    assert matching_experiments(shapes) == []


def test_convert_cli_writes_the_net_config_and_refuses_a_bad_name(tmp_path, tiny_state):
    """`pidtrt convert` (in process): the released .pth becomes a safetensors file that later
    commands load without --backbone; a wrong output suffix is one line and writes nothing."""
    from typer.testing import CliRunner

    from pid_trt.cli.main import app

    src = _save_pth(tmp_path / "model_ema_bf16.pth", tiny_state)
    dst = tmp_path / "w.safetensors"
    res = CliRunner().invoke(app, ["convert", str(src), "-o", str(dst), "--backbone", "tiny"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"wrote {dst} ({len(tiny_state)} tensors")
    loaded = load_checkpoint(dst, None)
    assert loaded.config == TINY
    _assert_same(loaded.state_dict, tiny_state)
    bad = CliRunner().invoke(app, ["convert", str(src), "-o", str(tmp_path / "w.pt"), "--backbone", "tiny"])
    assert bad.exit_code != 0 and bad.output.count("\n") == 1 and "expected a .safetensors" in bad.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_ema_bf16.pth", "w.safetensors"]
