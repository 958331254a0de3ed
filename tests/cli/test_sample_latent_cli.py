"""`pidtrt sample-latent` into a folder that does not exist: one line naming the folder, exit 3
(an I/O failure), no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pid_trt.cli.errors import EXIT_ENV
from tests.message_helpers import assert_printable_line


def test_sample_latent_into_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "lat.safetensors"
    cmd = [sys.executable, "-m", "pid_trt.cli.main", "sample-latent", "-o", str(target)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == EXIT_ENV, (res.returncode, res.stderr)
    lines = res.stderr.strip("\n").split("\n")
    assert len(lines) == 1, res.stderr
    assert_printable_line(lines[0])
    assert lines[0].startswith("error: ") and "no such folder" in lines[0], lines[0]
    assert str(tmp_path / "missing") in lines[0], lines[0]
    assert "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []
