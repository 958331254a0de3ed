"""`pidtrt verify` and `pidtrt engines show` as a user runs them (subprocesses, real ONNX Runtime
sessions, real TensorRT-RTX builds on the CPU).

A golden case (v1_flux_square) as a user has it: its net config, its converted checkpoint,
its latent file. ONNX Runtime fp32 and fp16 against the torch reference pass; a copy of the
fp32 export with one weight scaled fails, names the figure, and ``--layers`` points at the
layer that reads the scaled weight.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import golden_case, require
from tests.engine_helpers import built_store, pidtrt
from tests.verify.helpers import golden_user_files, model_args

# Each test exports and runs whole decodes on two backends (75 s for the first on 2 cores): the quick
# tier keeps one (ONNX Runtime fp32 against torch); the others are marked slow.

#: The weight the perturbed graph scales (read by one Gemm of the second pixel block).
PERTURBED = "model.pixel_blocks.1.compress_to_attn.weight"


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    require("onnxruntime")
    root = tmp_path_factory.mktemp("verify-golden")
    return root, golden_user_files(golden_case("v1_flux_square"), root)


def _verify(root: Path, files, *args: str):
    return pidtrt("verify", *model_args(files), *args, cwd=root)


@pytest.mark.parametrize("precision", ["fp32", pytest.param("fp16", marks=pytest.mark.slow)])
def test_onnxruntime_passes_against_torch(golden, precision):
    root, files = golden
    rep = root / f"report-{precision}"
    res = _verify(
        root, files, "--backend", f"onnxruntime:{precision}", "--export-dir", "export", "--report", str(rep)
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS" in res.stdout and "torch:fp32" in res.stdout
    report = json.loads((rep / "report.json").read_text())
    assert report["passed"] and report["candidate"] == f"onnxruntime:{precision}"
    steps, image = report["inputs"][0]["steps"], report["inputs"][0]["image"]
    assert len(steps) == 4 and {"max_abs", "mean_abs", "psnr_db", "cosine", "snr_db", "l2"} <= set(image)
    if precision == "fp32":
        assert report["bounds"]["image"]["text"] == "max|d| <= 0.001"
        assert all(s["max_abs"] <= 1e-3 for s in steps) and image["max_abs"] <= 1e-3
    else:
        assert report["bounds"]["image"]["text"] == "PSNR >= 55 dB"
        assert image["psnr_db"] >= 55.0 and 0.999 < image["cosine"] <= 1.0
    md = (rep / "report.md").read_text()
    assert "verdict: **PASS**" in md and "| step 3 (t=0.342) |" in md
    assert (rep / "worst_crop.png").stat().st_size > 0 and (rep / "steps.png").stat().st_size > 0


def _perturb(export: Path, out: Path) -> None:
    """Copy the fp32 export and scale one weight of its step graph by 1.5."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(export, out)
    (folder,) = [p for p in out.iterdir() if p.is_dir() and "-fp32-" in p.name]
    model = onnx.load(str(folder / "step.onnx"))
    (init,) = [i for i in model.graph.initializer if i.name == PERTURBED]
    init.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(init) * 1.5).astype(np.float32), PERTURBED))
    (folder / "step.onnx.data").unlink()
    onnx.save_model(model, str(folder / "step.onnx"), save_as_external_data=True, location="step.onnx.data")


@pytest.mark.slow  # two more verify runs on ORT fp32 (one with --layers)
def test_perturbed_graph_fails_and_layers_find_it(golden):
    root, files = golden
    if not (root / "export").is_dir():  # run alone: make the clean fp32 export first
        assert _verify(root, files, "--backend", "onnxruntime:fp32", "--export-dir", "export").returncode == 0
    _perturb(root / "export", root / "perturbed")
    res = _verify(
        root, files, "--backend", "onnxruntime:fp32", "--export-dir", "perturbed", "--against-export-dir", "export",
        "--layers", "--report", "report-perturbed",
    )  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    fail = [line for line in res.stderr.splitlines() if line.startswith("FAIL")]
    assert len(fail) == 1 and re.search(r"velocity max\|d\| [\d.]+ \(bound max\|d\| <= 0\.001", fail[0]), fail
    first = res.stdout.split("first diverging (graph order):")[1].splitlines()[2]
    assert PERTURBED in first and "Gemm" in first, res.stdout  # the layer that reads the scaled weight
    report = json.loads((root / "report-perturbed" / "report.json").read_text())
    assert not report["passed"] and report["layers"]["first"][0]["weights"][0] == PERTURBED
    assert all(row["rel_l2"] > 1e-4 for row in report["layers"]["first"])


@pytest.mark.slow  # three CLI processes for refusals; tests/doctor/ refuses the same pairs
def test_pairs_that_cannot_run_here_say_why():
    res = pidtrt(
        "verify", "--backbone", "tiny", "--random-weights", "--res", "64", "--backend", "onnxruntime:bf16"
    )
    assert res.returncode == 4, res.stdout + res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert (
        line.startswith("cannot run here: onnxruntime:bf16 against torch:fp32: candidate")
        and "bfloat16" in line
    )
    if not torch.cuda.is_available():
        res = pidtrt(
            "verify", "--backbone", "tiny", "--random-weights", "--res", "64", "--backend", "tensorrt"
        )
        assert res.returncode == 4 and "tensorrt:bf16" in res.stderr and "CUDA" in res.stderr, res.stderr
    res = pidtrt(
        "verify",
        "--backbone",
        "tiny",
        "--random-weights",
        "--res",
        "64",
        "--backend",
        "torch:fp16",
        "--layers",
    )
    assert res.returncode == 2 and "--layers" in res.stderr


@pytest.mark.slow  # the tiny TensorRT-RTX engine pair (~40 s on 2 cores), shared with tests/cli/test_build_cli.py
def test_engines_show_a_tiny_plan(tmp_path_factory):
    require("tensorrt_rtx")
    # tiny, 64x64, TensorRT-RTX ahead of time on the CPU: the store tests/cli/test_build_cli.py built
    store = built_store(tmp_path_factory.getbasetemp() / "trt-store")
    root = store["root"]
    rc, out, err, _ = store["results"]["fp16"]
    assert rc == 0, out + err
    (manifest,) = [
        json.loads(p.read_text())
        for p in (root / "engines").glob("*.manifest.json")
        if '"precision": "fp16"' in p.read_text() and '"graph": "step"' in p.read_text()
    ]
    args = ["engines", "show", manifest["digest"][:8], "--engine-dir", str(root / "engines"),
            "--export-dir", str(root / "export-fp16")]  # fmt: skip
    res = pidtrt(*args)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "target compute capabilities: 8.6, 8.9, 12.0" in out and "precision fp16" in out
    assert "attention: 6 attention layer(s) at build time; all fused" in out
    assert re.search(r"input\s+x\s+\[1, 3, 64, 64\]\s+FLOAT", out) and re.search(r"output\s+velocity", out)
    assert re.search(
        r"compute layers by output type: .*MATRIX_MULTIPLY [^;]*HALF \d+", out
    )  # per-layer precision summary
    if not torch.cuda.is_available():  # the fallback, said in one line
        assert "note: engine inspector unavailable" in out and "without a CUDA GPU" in out
        assert "network parsed from" in out
    facts = json.loads(pidtrt(*args, "--json").stdout)
    assert facts["manifest"]["digest"] == manifest["digest"] and facts["targets"] == ["8.6", "8.9", "12.0"]
    gone = pidtrt("engines", "show", "abcdef12", "--engine-dir", str(root / "engines"))
    assert gone.returncode == 2 and "no engines match" in gone.stderr
