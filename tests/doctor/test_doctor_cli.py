"""``pidtrt doctor`` on this machine as it is: real facts, the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pid_trt.doctor import gather

HAS_CUDA = torch.cuda.is_available()


def doctor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "pid_trt.cli.main", "doctor", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_facts_of_this_machine() -> None:
    facts = gather("no-such-store")
    assert facts.cpu_count == os.cpu_count()
    assert facts.memory_total > facts.memory_available > 0
    assert facts.torch_version == torch.__version__
    assert len(facts.gpus) == (torch.cuda.device_count() if HAS_CUDA else 0)
    assert not facts.store.exists
    import importlib.util

    for extra in facts.extras:
        module = {"nvidia-pytriton": "pytriton", "nvidia-modelopt": "modelopt"}.get(extra.distribution)
        installed = importlib.util.find_spec(module or extra.distribution) is not None
        assert (extra.version is not None) == installed, extra


def test_screen_and_exit_code_for_a_tiny_job(tmp_path: Path) -> None:
    res = doctor("--backbone", "tiny", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "this machine:"
    marks = [ln.strip()[0] for ln in lines if ln.startswith("  ") and not ln.startswith("      ")]
    assert marks and set(marks) <= {"✓", "✗"}
    assert any("CPU cores" in ln for ln in lines) and any(ln.startswith("  ✓ torch ") for ln in lines)
    assert "the job: tiny, 128x128 batch 1, torch:fp32 on cpu:" in lines
    assert "  ✓ 128x128 batch 1: one shot (no trained sizes are known for this net)" in lines
    assert lines[-1] == "the job can run here"
    assert res.stderr == ""


def test_tensorrt_job_without_a_gpu_exits_1_with_one_line(tmp_path: Path) -> None:
    res = doctor("--backbone", "tiny", "--backend", "tensorrt", cwd=tmp_path)
    if HAS_CUDA:
        assert res.returncode in (0, 1)
        return
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1
    assert res.stderr.startswith(
        "error: cannot run here: backend tensorrt:bf16 on cuda:0: needs an NVIDIA GPU"
    )
    assert "the job cannot run here" in res.stdout


def test_json_holds_facts_and_verdicts(tmp_path: Path) -> None:
    res = doctor("--backbone", "tiny", "--backend", "onnxruntime:fp16", "--json", cwd=tmp_path)
    data = json.loads(res.stdout)
    assert data["facts"]["cpu_count"] == os.cpu_count()
    assert data["job"]["backend"] == "onnxruntime" and data["job"]["precision"] == "fp16"
    assert {v["check"] for v in data["verdicts"]["job"]} >= {"backend", "weights", "size", "memory"}
    assert res.returncode == (0 if data["runnable"] else 1)
    assert all(set(v) == {"check", "ok", "message", "fix", "blocking"} for v in data["verdicts"]["machine"])


@pytest.mark.slow  # a doctor CLI process; the verdicts are tested as data in tests/doctor/test_verdicts_data.py (test_cpu_box_onnxruntime_bf16_is_refused_fp32_runs)
def test_onnxruntime_bf16_on_the_cpu_cannot_run(tmp_path: Path) -> None:
    res = doctor("--backend", "onnxruntime:bf16", cwd=tmp_path)
    assert res.returncode == 1
    assert "CPU provider has no bfloat16 kernels" in res.stderr and "--backend onnxruntime:fp32" in res.stderr


@pytest.mark.slow  # a doctor CLI process for a usage error; the quick tier keeps the doctor's exit codes in test_tensorrt_job_without_a_gpu_exits_1_with_one_line
def test_bad_option_is_a_usage_error(tmp_path: Path) -> None:
    res = doctor("--backend", "nope", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.startswith("error: --backend 'nope' is not known") and res.stderr.count("\n") == 1
    assert "Traceback" not in res.stderr


@pytest.mark.slow  # a doctor CLI process for a usage error; the quick tier keeps the doctor's exit codes in test_tensorrt_job_without_a_gpu_exits_1_with_one_line
def test_missing_checkpoint_is_a_usage_error(tmp_path: Path) -> None:
    res = doctor("--backbone", "flux", "--checkpoint", str(tmp_path / "absent.pth"), cwd=tmp_path)
    assert res.returncode == 2 and "absent.pth: file not found" in res.stderr


@pytest.mark.slow  # a doctor CLI process hashing a stand-in checkpoint; README's first steps run the doctor in the quick tier and its checks are data in tests/doctor/test_verdicts_data.py
def test_named_checkpoint_is_hashed(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(b"not really weights")
    import hashlib

    want = hashlib.sha256(b"not really weights").hexdigest()[:12]
    res = doctor("--backbone", "flux", "--checkpoint", str(ckpt), "--size", "256x256", cwd=tmp_path)
    assert f"✓ flux-2k: checkpoint model.pth (sha256 {want}...)" in res.stdout


@pytest.mark.slow  # the tiny TensorRT-RTX engine pair (~40 s on 2 cores); the engine verdicts are tested as data in tests/doctor/test_verdicts_data.py
def test_real_engine_store_is_listed_and_matched(tmp_path_factory) -> None:
    """Tiny fp16 / bf16 engine pairs built for real (TensorRT-RTX on the CPU) into a store: the
    doctor lists them and finds the pair of the job's size, precision and weights."""
    from tests.engine_helpers import SIZE, built_store

    store = built_store(tmp_path_factory.getbasetemp() / "trt-store")
    assert all(r[0] == 0 for r in store["results"].values()), store["results"]
    engines = store["root"] / "engines"
    facts = gather(engines)
    assert facts.store.exists and len(facts.store.engines) == 4
    assert {e.graph for e in facts.store.engines} == {"prepare", "step"}
    assert all(e.status == "ok" for e in facts.store.engines)
    res = doctor(
        "--backbone", "tiny", "--size", SIZE, "--backend", "tensorrt:fp16", "--engine-dir", str(engines),
        "--json", cwd=store["root"],
    )  # fmt: skip
    data = json.loads(res.stdout)
    engine = next(v for v in data["verdicts"]["job"] if v["check"] == "engine")
    assert engine["ok"] and f"{SIZE} batch 1" in engine["message"]
    other = doctor(
        "--backbone", "tiny", "--size", "128x64", "--backend", "tensorrt:fp16", "--engine-dir", str(engines),
        "--json", cwd=store["root"],
    )  # fmt: skip
    missing = next(v for v in json.loads(other.stdout)["verdicts"]["job"] if v["check"] == "engine")
    assert not missing["ok"]
    assert missing["fix"] == (
        f"pidtrt build --backbone tiny --size 128x64 --precision fp16 --random-weights --engine-dir {engines}"
    )
