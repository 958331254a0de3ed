"""`pidtrt export --verify`: onnx.checker by path and the TensorRT-RTX parser on both graphs."""

from __future__ import annotations

import re

import pytest

from pid_trt.config import TINY
from tests.engine_helpers import pidtrt


@pytest.mark.requires("tensorrt_rtx")
@pytest.mark.slow  # an fp16 export parsed by TensorRT-RTX (~15 s); the quick tier exports through the CLI in tests/backends/test_ort_parity.py
def test_export_verify_reports_checker_and_parser(tmp_path):
    res = pidtrt("export", "--backbone", "tiny", "--random-weights", "--res", "64", "--precision", "fp16",
                 "--export-dir", str(tmp_path / "exp"), "--verify")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (
        "export: prepare graph (64x64, fp16)" in res.stderr and "export: step graph" in res.stderr
    )  # stages
    lines = {m.group(1): m for m in re.finditer(r"verified (\w+\.onnx): onnx.checker OK; \S+ parse OK, "
                                                r"(\d+) layers, (\d+) fused attention", res.stdout)}  # fmt: skip
    assert set(lines) == {"prepare.onnx", "step.onnx"}, res.stdout
    assert int(lines["step.onnx"].group(3)) == TINY.patch_depth + TINY.pixel_depth  # one per block
    assert int(lines["prepare.onnx"].group(3)) == 0  # the prepare graph has no attention
