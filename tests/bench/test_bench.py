"""pidtrt bench: record schema, percentiles, the markdown table, and real tiny runs (no timing
thresholds: figures are checked for presence, type and consistency only)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from pid_trt.backends.registry import backend_class
from pid_trt.bench.cases import BenchCase, bench_runtimes, expand_cases
from pid_trt.bench.records import (
    REQUIRED_KEYS,
    SCHEMA_VERSION,
    BenchRecord,
    Environment,
    Percentiles,
    Status,
    dump_document,
    load_document,
    validate_record,
)
from pid_trt.bench.report import plot, render_markdown, render_table
from pid_trt.bench.runner import percentiles
from pid_trt.bench.session import BenchSettings, gpu_spec_for, run_bench
from pid_trt.cli.main import app
from pid_trt.config import Precision
from pid_trt.errors import ConfigError
from pid_trt.options import NetOptions, Runtime, RuntimeOptions
from tests.conftest import require

ENV = Environment("Test CPU (2 cores)", "cpu", "Test CPU", 2, None, {"torch": "x"})


def _record(backend="torch", status=Status.OK, p50=100.0, hoisted=True, reason=None, mem=500.0):
    measured = status is Status.OK
    return BenchRecord(
        backend=backend, precision="fp32", height=64, width=64, batch=1, steps=4, hoisted=hoisted,
        device=ENV.device, device_kind="cpu", status=status, reason=reason, warmup=1, runs=3, threads=2,
        latency_ms=Percentiles(p50, p50 * 1.1, p50 * 1.2) if measured else None,
        step_ms=Percentiles(p50 / 4, p50 / 4, p50 / 4) if measured else None,
        images_per_s=1e3 / p50 if measured else None, peak_memory_mb=mem if measured else None,
        achieved_tflops=0.5 if measured else None, env=ENV,
    )  # fmt: skip


# --- records -------------------------------------------------------------------------------


def test_record_dict_has_required_keys_and_types_and_round_trips():
    rec = _record()
    d = json.loads(json.dumps(rec.to_dict()))
    for key in REQUIRED_KEYS:
        assert key in d
    validate_record(d)
    assert d["status"] == "ok" and isinstance(d["hoisted"], bool)
    assert set(d["latency_ms"]) >= {"p50", "p95", "p99"} and "p50" in d["step_ms"]
    assert BenchRecord.from_dict(d) == rec


@pytest.mark.parametrize("key", ["backend", "latency_ms", "hoisted", "device", "mfu"])
def test_record_missing_key_is_refused(key):
    d = _record().to_dict()
    del d[key]
    with pytest.raises(ConfigError, match=key):
        validate_record(d)


def test_record_wrong_types_are_refused():
    d = _record().to_dict()
    d["height"] = "64"
    with pytest.raises(ConfigError, match="height"):
        validate_record(d)
    d = _record().to_dict()
    d["hoisted"] = 1
    with pytest.raises(ConfigError, match="hoisted"):
        validate_record(d)
    d = _record().to_dict()
    d["batch"] = True  # a bool is not an integer here
    with pytest.raises(ConfigError, match="batch"):
        validate_record(d)


def test_ok_record_needs_figures_and_skipped_needs_reason():
    d = _record().to_dict()
    d["latency_ms"] = None
    with pytest.raises(ConfigError, match="latency_ms"):
        validate_record(d)
    d = _record(status=Status.SKIPPED, reason=None).to_dict()
    with pytest.raises(ConfigError, match="reason"):
        validate_record(d)
    validate_record(_record(status=Status.SKIPPED, reason="no GPU").to_dict())


def test_document_round_trip_and_schema_tag():
    recs = [_record(), _record("tensorrt", Status.SKIPPED, reason="no CUDA GPU")]
    text = dump_document(recs, {"k": 1})
    assert json.loads(text)["schema"] == SCHEMA_VERSION
    assert load_document(text) == recs
    with pytest.raises(ConfigError):
        load_document('{"schema": "other", "records": []}')


# --- percentiles ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20, 101])
def test_percentiles_match_numpy(n):
    xs = np.random.default_rng(n).exponential(10.0, size=n)
    got = percentiles(list(xs))
    want = np.percentile(xs, [50, 95, 99])
    assert [got.p50, got.p95, got.p99] == pytest.approx(list(want), rel=1e-12, abs=1e-12)


def test_percentiles_of_nothing_raise():
    with pytest.raises(ValueError):
        percentiles([])


# --- table ---------------------------------------------------------------------------------


def test_table_has_skipped_rows_with_reasons_and_ratios():
    recs = [
        _record("torch", p50=200.0, mem=400.0),
        _record("onnxruntime", p50=100.0, mem=600.0),
        _record("tensorrt", Status.SKIPPED, reason="no CUDA GPU: torch sees none"),
        _record("torch-compile", Status.FAILED, reason="RuntimeError: a | b"),
    ]
    table = render_table(recs)
    rows = [ln for ln in table.splitlines() if ln.startswith("| ")][1:]
    assert len(rows) == 4
    assert "1.00×" in rows[0] and "2.00×" in rows[1] and "1.50×" in rows[1]
    assert "skipped: no CUDA GPU: torch sees none" in rows[2]
    assert "failed: RuntimeError: a / b" in rows[3]  # a pipe in a reason must not split the row
    assert all(r.count("|") == rows[0].count("|") for r in rows)
    assert "Test CPU (2 cores)" in render_markdown(recs)


def test_plot_writes_png_with_skipped_rows(tmp_path):
    require("matplotlib")
    recs = [_record("torch"), _record("tensorrt", Status.SKIPPED, reason="no GPU")]
    out = plot(recs, tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- cases ---------------------------------------------------------------------------------


def _runtime(text, precision=None, device="cpu"):
    (runtime,) = bench_runtimes([text], RuntimeOptions(precision=precision, device=device))
    return runtime


def test_bench_runtimes_defaults_overrides_and_moves():
    torch_cpu = _runtime("torch")
    assert (torch_cpu.name, torch_cpu.precision, torch_cpu.device, torch_cpu.moved) == (
        "torch", Precision.FP32, "cpu", None
    )  # fmt: skip
    assert _runtime("torch", device="cuda").precision is Precision.BF16
    trt = _runtime("tensorrt:fp8")
    assert (trt.name, trt.precision, trt.device, trt.moved_from) == ("tensorrt", Precision.FP8, "cuda", "cpu")
    ort = _runtime("onnxruntime@cpu", "fp16", "cuda")
    assert (ort.name, ort.precision, ort.device) == ("onnxruntime", Precision.FP16, "cpu")
    # --precision is the default of the backends written without one
    assert [r.precision for r in bench_runtimes(["torch:bf16", "torch"], RuntimeOptions(precision="fp16"))] == [
        Precision.BF16, Precision.FP16,
    ]  # fmt: skip
    assert len(bench_runtimes(["torch", "torch:fp32"], RuntimeOptions(device="cpu"))) == 1
    for bad in ("jax", "torch:int4", "torch@tpu"):
        with pytest.raises(ConfigError):
            _runtime(bad)


def test_expand_cases_hoist_only_where_supported():
    runtimes = [_runtime("torch"), _runtime("tensorrt")]
    cases = expand_cases(runtimes, [(64, 64), (128, 128)], [1, 2], (True, False))
    assert len(cases) == 2 * 2 * (2 + 1)
    assert all(c.hoist for c in cases if not c.runtime.backend.can_unhoist)
    assert sum(not c.hoist for c in cases) == 4
    assert cases[0].height == 64 and cases[-1].height == 128
    trt = cases[2]  # the child process gets the case as JSON: the moved device, said once, is not carried
    assert trt.runtime.moved_from == "cpu"
    assert BenchCase.from_dict(json.loads(json.dumps(trt.to_dict()))) == replace(
        trt, runtime=trt.runtime.on("cuda")
    )


def test_a_moved_device_is_said_in_one_line(tmp_path):
    res = CliRunner().invoke(app, ["bench", "--backbone", "tiny", "--random-weights", "--size", "64x64",
                                   "--device", "cpu", "--backend", "tensorrt", "--runs", "1", "--warmup", "0",
                                   "--engine-dir", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "warning: tensorrt:bf16 runs on cuda, not cpu: moved to cuda" in res.output


def test_gpu_names_map_to_cost_model():
    assert gpu_spec_for("NVIDIA H100 80GB HBM3").name == "H100 SXM"
    assert gpu_spec_for("NVIDIA H100 PCIe") is None
    assert gpu_spec_for("NVIDIA GeForce RTX 4090").name == "RTX 4090"
    assert gpu_spec_for("Tesla T4") is None


# --- real runs -----------------------------------------------------------------------------


@pytest.mark.slow  # a bench child process per case, ~18 s on 2 cores
def test_cli_tiny_bench_writes_valid_json(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--backbone", "tiny", "--random-weights", "--size", "64x64", "--runs", "2",
            "--warmup", "1", "--device", "cpu", "--backend", "torch", "--backend", "tensorrt:fp16",
            "--json", str(out), "--engine-dir", str(tmp_path / "engines")]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == SCHEMA_VERSION
    for r in doc["records"]:
        validate_record(r)
    torch_rec, trt_rec = doc["records"]
    assert torch_rec["status"] == "ok" and torch_rec["backend"] == "torch"
    assert (torch_rec["height"], torch_rec["width"], torch_rec["batch"], torch_rec["steps"]) == (64, 64, 1, 4)
    lat = torch_rec["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    assert 0 < torch_rec["step_ms"]["p50"] < lat["p99"]  # one step is part of a decode
    assert math.isclose(torch_rec["images_per_s"], 1e3 / (torch_rec["latency_ms"]["p50"]), rel_tol=0.5)
    assert torch_rec["peak_memory_mb"] > 0 and torch_rec["achieved_tflops"] > 0
    assert torch_rec["env"]["versions"]["torch"]
    # tensorrt: skipped with a reason on a machine without CUDA or without a built engine
    assert trt_rec["status"] == "skipped" and trt_rec["reason"]
    assert "skipped: " + trt_rec["reason"] in res.output


def test_failing_case_becomes_a_failed_record(tmp_path):
    # fp8 is not a torch precision: refused when the runtime is resolved; a case made past that
    # check fails in its child process, and the run goes on and records why.
    with pytest.raises(ConfigError, match="fp8"):
        _runtime("torch:fp8")
    settings = BenchSettings(NetOptions(backbone="tiny", random_weights=True), warmup=0, runs=1)
    unchecked = Runtime(backend_class("torch"), Precision.FP8, "cpu")
    cases = expand_cases([unchecked], [(64, 64)], [1], (True,))
    (rec,) = run_bench(cases, settings)
    assert rec.status is Status.FAILED and "fp8" in rec.reason
    validate_record(rec.to_dict())


def test_estimate_prints_cost_table_without_running():
    res = CliRunner().invoke(app, ["bench", "--estimate", "--backbone", "flux", "--size", "3840x2160"])
    assert res.exit_code == 0, res.output
    assert "H100" in res.output and "3840" in res.output


def test_bad_size_is_a_usage_error():
    res = CliRunner().invoke(app, ["bench", "--backbone", "tiny", "--random-weights", "--size", "70x64"])
    assert res.exit_code == 2 and "70x64" in res.output


@pytest.mark.slow  # a bench child process per case, ~40 s on 2 cores
def test_cli_tiled_bench_writes_tiled_rows_beside_one_shot_rows(tmp_path):
    """--tiles 2x2 --tile-batch 2: each case one shot, then tiled; the tiled row names its grid,
    tile size, tile batch and tile count; the table has a tiles column."""
    out = tmp_path / "bench.json"
    args = ["bench", "--backbone", "tiny", "--random-weights", "--size", "128x96", "--runs", "1", "--warmup", "0",
            "--device", "cpu", "--tiles", "2x2", "--tile-batch", "2", "--json", str(out)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    one, tiled = json.loads(out.read_text())["records"]
    for r in (one, tiled):
        validate_record(r)
        assert r["status"] == "ok" and (r["height"], r["width"]) == (96, 128)
    assert one["tiling"] is None and one["tiles"] is None
    assert tiled["tiling"] == "--tiles 2x2 --tile-batch 2"
    assert (tiled["tiles"], tiled["tile_batch"], tiled["tile_count"]) == ("2x2", 2, 4)
    w, h = map(int, tiled["tile_size"].split("x"))
    assert (
        64 <= w < 128 and 48 <= h < 96 and w % 32 == 0 and h % 32 == 0
    )  # two tiles overlap on the latent grid
    assert tiled["flop_per_decode"] > one["flop_per_decode"]  # the overlaps are computed twice
    assert "| tiles |" in res.output and "| one shot |" in res.output
    assert f"| 2x2 of {tiled['tile_size']}, tile batch 2, 4 tiles |" in res.output
    rec = BenchRecord.from_dict(tiled)
    assert rec.label == "torch fp32 tiles 2x2" and rec.tile_count == 4


def test_tiling_options_are_refused_with_server_or_estimate():
    res = CliRunner().invoke(
        app, ["bench", "--estimate", "--backbone", "flux", "--size", "64x64", "--tiles", "2x2"]
    )
    assert res.exit_code != 0 and "--tiles with --estimate" in res.output
