"""`pidtrt build` and `pidtrt engines`: real TensorRT-RTX builds of the tiny config on CPU."""

from __future__ import annotations

import shutil
import time

import pytest

from tests.conftest import require
from tests.engine_helpers import PRECISIONS, build_args, built_store, manifests, pidtrt

pytestmark = pytest.mark.requires("tensorrt_rtx")


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    return built_store(tmp_path_factory.getbasetemp() / "trt-store")


@pytest.mark.slow  # a TensorRT-RTX build of the tiny fp16 + bf16 pair (~40 s on 2 cores); the quick tier's engine path is ORT export + decode (tests/backends/test_ort_parity.py)
def test_builds_make_both_engines_with_manifests(store):
    for precision, (rc, out, err, _s) in store["results"].items():
        assert rc == 0, f"{precision}: rc {rc}\n{out}\n{err}"
        assert "export (exported)" in out and "peak RSS" in out
        assert out.count(" built ") + out.count("│ built") >= 2, out
    engine_dir = store["root"] / "engines"
    found = {(m["key"]["precision"], m["build"]["graph"]) for m in manifests(engine_dir)}
    assert found == {(p, g) for p in PRECISIONS for g in ("prepare", "step")}
    for m in manifests(engine_dir):
        plan = engine_dir / m["path"]
        assert plan.is_file() and plan.stat().st_size == m["size_bytes"] > 10_000
        assert plan.read_bytes()[:4] == b"vtrt"  # a TensorRT-RTX plan, not a placeholder
        k = m["key"]
        assert (k["width"], k["height"], k["batch_range"], k["flavour"]) == (
            64,
            64,
            [1, 1, 1],
            "tensorrt-rtx",
        )
        assert k["compute_capabilities"] == ["8.6", "8.9", "12.0"]
        assert m["build"]["export_digest"] and m["build"]["weights"] == "random:0"
    pairs = {}
    for m in manifests(engine_dir):
        pairs.setdefault(m["key"]["precision"], set()).add(m["build"]["export_digest"])
    assert all(len(d) == 1 for d in pairs.values())  # prepare and step come from one export


@pytest.mark.slow  # a TensorRT-RTX build of the tiny fp16 + bf16 pair (~40 s on 2 cores); the quick tier's engine path is ORT export + decode (tests/backends/test_ort_parity.py)
def test_second_build_is_a_cache_hit(store):
    root = store["root"]
    plans = {p: p.stat().st_mtime_ns for p in (root / "engines").glob("*.plan")}
    start = time.perf_counter()
    res = pidtrt(*build_args(root, "fp16"))
    seconds = time.perf_counter() - start
    assert res.returncode == 0, res.stderr
    assert "export (reused)" in res.stdout and res.stdout.count("reused") >= 3, res.stdout
    assert seconds < 0.5 * store["results"]["fp16"][3], (seconds, store["results"]["fp16"][3])
    assert {p: p.stat().st_mtime_ns for p in (root / "engines").glob("*.plan")} == plans


@pytest.mark.slow  # a TensorRT-RTX build of the tiny fp16 + bf16 pair (~40 s on 2 cores); the quick tier's engine path is ORT export + decode (tests/backends/test_ort_parity.py)
def test_engines_list_shows_them(store):
    res = pidtrt("engines", "list", "--engine-dir", str(store["root"] / "engines"))
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if "tensorrt-rtx" in line]
    assert len(rows) == 4, res.stdout
    for line in rows:
        assert "tiny" in line and "64x64" in line and "8.6,8.9,12.0" in line and "│ ok" in line
    assert sum("fp16" in r for r in rows) == 2 and sum("bf16" in r for r in rows) == 2
    assert "4 engine(s)" in res.stdout


@pytest.mark.slow  # a TensorRT-RTX build of the tiny fp16 + bf16 pair (~40 s on 2 cores); the quick tier's engine path is ORT export + decode (tests/backends/test_ort_parity.py)
def test_engines_list_flags_a_truncated_plan_corrupt(store, tmp_path):
    engines = shutil.copytree(store["root"] / "engines", tmp_path / "engines")
    plan = next(engines.glob("*fp16*.plan"))
    plan.write_bytes(plan.read_bytes()[:1000])
    res = pidtrt("engines", "list", "--engine-dir", str(engines))
    assert res.returncode == 0, res.stderr
    assert sum("corrupt" in line for line in res.stdout.splitlines()) == 1, res.stdout


@pytest.mark.slow  # a TensorRT-RTX build of the tiny fp16 + bf16 pair (~40 s on 2 cores); the quick tier's engine path is ORT export + decode (tests/backends/test_ort_parity.py)
def test_engines_rm_one_then_all(store, tmp_path):
    engines = shutil.copytree(store["root"] / "engines", tmp_path / "engines")
    m = manifests(engines)[0]
    res = pidtrt("engines", "rm", m["digest"][:10], "--engine-dir", str(engines))
    assert res.returncode == 0, res.stderr
    assert not (engines / m["path"]).exists() and len(manifests(engines)) == 3
    res = pidtrt("engines", "rm", "--all", "--engine-dir", str(engines))
    assert res.returncode == 0 and "3 engine(s) removed" in res.stdout
    assert not list(engines.glob("*.plan")) and not manifests(engines)
    res = pidtrt("engines", "rm", "abcdef12", "--engine-dir", str(engines))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no entries match" in res.stderr


def test_batch_range_needs_static_batch(tmp_path):
    res = pidtrt(*build_args(tmp_path, "fp16", "--batch", "1:2:4"))
    assert res.returncode == 2 and "static-batch" in res.stderr and res.stderr.count("\n") == 1


@pytest.mark.slow  # ModelOpt calibration (4 decodes) + export + two builds, ~40 s
def test_fp8_build_from_the_cli(tmp_path):
    require("modelopt.torch.quantization")
    refused = pidtrt(*build_args(tmp_path, "fp8", "--target-cc", "8.6"))
    assert refused.returncode == 2 and "no FP8" in refused.stderr, refused.stderr
    assert not list((tmp_path / "engines").glob("*.plan")) if (tmp_path / "engines").exists() else True
    res = pidtrt(*build_args(tmp_path, "fp8"))
    assert res.returncode == 0, res.stderr
    found = manifests(tmp_path / "engines")
    assert {m["build"]["graph"] for m in found} == {"prepare", "step"}
    for m in found:
        assert m["key"]["precision"] == "fp8" and m["key"]["compute_capabilities"] == ["8.9", "12.0"]
        assert (tmp_path / "engines" / m["path"]).read_bytes()[:4] == b"vtrt"
    step = next(m for m in found if m["build"]["graph"] == "step")
    assert step["build"]["attention_layers"] > 0  # bf16 base: attention fused, not decomposed
