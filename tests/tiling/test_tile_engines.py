"""The TensorRT engine a tiled plan names is the one the tensorrt backend looks for, and the
`pidtrt build` command it prints builds it (TensorRT-RTX on CPU, tiny config)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from pid_trt.io import write_latent_file
from tests.engine_helpers import pidtrt

pytestmark = pytest.mark.requires("tensorrt_rtx")


@pytest.mark.slow  # a TensorRT-RTX build of a batch-2 tile engine (~40 s on 2 cores); tests/cli/test_tiles_cli.py checks the printed plan
def test_the_plans_build_command_makes_the_tile_engine_the_decode_needs(tmp_path: Path) -> None:
    latent = tmp_path / "wide.safetensors"
    write_latent_file(
        latent, torch.randn(1, 16, 2, 4, generator=torch.Generator().manual_seed(0))
    )  # 128x64 px
    stores = ["--engine-dir", str(tmp_path / "engines"), "--export-dir", str(tmp_path / "export")]
    decode = ["decode", str(latent), "-o", str(tmp_path / "o.png"), "--backbone", "tiny", "--random-weights",
              "--backend", "tensorrt", "--precision", "fp16", "--tiles", "2x1", "--tile-size", "64x64",
              "--tile-batch", "2", *stores]  # fmt: skip
    plan = pidtrt(*decode, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    (cmd,) = [
        line.split("tensorrt: ", 1)[1]
        for line in plan.stdout.splitlines()
        if "tensorrt: pidtrt build" in line
    ]
    assert "--size 64x64 --batch 2 --precision fp16" in cmd

    before = pidtrt(*decode)  # the runtime checks the engine store before CUDA
    assert before.returncode != 0
    assert "no TensorRT engine for 64x64 batch 2 fp16" in before.stderr, before.stderr

    build = pidtrt(*shlex.split(cmd)[1:], *stores, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    keys = [json.loads(p.read_text())["key"] for p in (tmp_path / "engines").glob("*.manifest.json")]
    assert len(keys) == 2  # prepare + step
    for k in keys:
        assert (k["width"], k["height"], k["batch_range"], k["precision"], k["flavour"]) == (
            64, 64, [2, 2, 2], "fp16", "tensorrt-rtx",
        )  # fmt: skip

    after = pidtrt(*decode)  # the engine is found now; what is missing is a GPU
    assert "no TensorRT engine" not in after.stderr, after.stderr
    if not torch.cuda.is_available():
        assert after.returncode != 0 and "CUDA" in after.stderr, after.stderr
