"""``pidtrt bench --pipeline``: the JSON names the checks rely on, the simulated device's rate,
the cost-model floor for ``--simulate-device``, a real (tiny) network, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pid_trt.config import Precision, get_preset
from pid_trt.costmodel import estimate, floor_time, get_gpu


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pid_trt.cli.main", "bench", "--pipeline", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600)


def test_simulated_device_json_holds_the_named_keys(tmp_path):
    run = _cli(
        "--backbone", "flux", "--size", "64x64", "--simulate-device-ms", "40", "--images", "3",
        "--format", "png", "--format", "jpg", "--json", "out.json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    doc = json.loads((tmp_path / "out.json").read_text())
    records = doc["records"]
    assert {(r["format"], r["path"]) for r in records} == {
        ("png", "serial"), ("png", "pipelined"), ("jpeg", "serial"), ("jpeg", "pipelined"),
    }  # fmt: skip
    for r in records:
        assert r["simulated_device_images_per_s"] == pytest.approx(1000 / 40)
        assert (
            0 < r["images_per_s"] <= r["simulated_device_images_per_s"] * 1.05
        )  # never faster than the device
        assert r["stages_ms"]["device"] >= 39.0 and r["bytes_per_image"] > 0
        for stage in ("read_latent", "host_copy", "encode", "write"):
            assert stage in r["stages_ms"]
    assert "load_average" in doc["meta"]
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # its scratch files are gone


@pytest.mark.slow  # another bench child process; the quick tier runs --pipeline with a simulated device and on the real tiny net
def test_simulate_device_waits_the_cost_model_floor(tmp_path):
    run = _cli(
        "--backbone", "flux", "--size", "64x64", "--simulate-device", "h100:fp8", "--images", "2", "--no-serial",
        "--json", "out.json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (record,) = json.loads((tmp_path / "out.json").read_text())["records"]
    want = 1000 * floor_time(
        estimate(get_preset("flux").config, 64, 64), get_gpu("H100 SXM"), Precision.FP8, per="decode"
    )
    assert record["simulated_device_ms"] == pytest.approx(want)


def test_real_tiny_network_without_a_simulated_device(tmp_path):
    run = _cli(
        "--backbone", "tiny", "--random-weights", "--size", "64x64", "--images", "2", "--format", "webp",
        "--json", "out.json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    records = json.loads((tmp_path / "out.json").read_text())["records"]
    assert len(records) == 2 and all(r["simulated_device_images_per_s"] is None for r in records)
    assert all(r["images_per_s"] > 0 for r in records)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("--format", "bmp", "--simulate-device-ms", "1"), "--format bmp: expected png, jpg or webp"),
        (("--simulate-device", "h100:int4"), "--simulate-device h100:int4"),
        (("--simulate-device", "h100:bf16", "--simulate-device-ms", "5"), "exclude each other"),
    ],
)
@pytest.mark.slow  # a CLI process per flag; bench's usage errors stay quick in tests/bench/test_bench.py (in process)
def test_bad_flags_are_refused_in_one_line(tmp_path, args, match):
    run = _cli("--backbone", "flux", "--size", "64x64", "--images", "2", *args, cwd=tmp_path)
    assert run.returncode != 0 and match in run.stderr and "Traceback" not in run.stderr
