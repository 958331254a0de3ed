"""FP8 requests without the ``fp8`` extra: one line naming the extra, exit 3, nothing written.

The child process blocks ``modelopt`` through ``sys.modules`` (``None`` makes every import of
it fail), so the test holds whether or not Model Optimizer is installed here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHILD = "import sys; sys.modules['modelopt'] = None; sys.argv = ['pidtrt'] + sys.argv[1:]; " \
    "from pid_trt.cli.main import main; main()"  # fmt: skip


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


#: The fp8 request both commands share (tiny preset, no checkpoint).
FP8_REQUEST = (
    "--backbone",
    "tiny",
    "--random-weights",
    "--res",
    "64",
    "--precision",
    "fp8",
    "--export-dir",
    "exp",
)


@pytest.mark.parametrize("command", [("export",), ("build", "--engine-dir", "eng")], ids=["export", "build"])
def test_fp8_without_modelopt_is_one_line(tmp_path, command):
    res = _run(tmp_path, command[0], *FP8_REQUEST, *command[1:])
    assert res.returncode == 3, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pid-trt[fp8]" in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not any((tmp_path / d).exists() and any((tmp_path / d).rglob("*.onnx")) for d in ("exp", "eng"))
