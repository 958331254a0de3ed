"""Shared by the TensorRT build / backend tests: real `pidtrt build` runs of the tiny config
(TensorRT-RTX on CPU), done once per test process into one temp store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The engines every test of these modules uses: tiny, 64x64, batch 1.
PRECISIONS = ("fp16", "bf16")
SIZE = "64x64"
_BUILT: dict[str, dict] = {}


def pidtrt(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess (as a user would), capturing text output."""
    env = dict(os.environ, COLUMNS="200", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "pid_trt.cli.main", *args],
        cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def build_args(root: Path, precision: str, *extra: str) -> list[str]:
    return [
        "build", "--backbone", "tiny", "--random-weights", "--size", SIZE, "--precision", precision,
        "--engine-dir", str(root / "engines"), "--export-dir", str(root / f"export-{precision}"), *extra,
    ]  # fmt: skip


def built_store(root: Path) -> dict:
    """Build the fp16 and bf16 engine pairs (two CLI processes in parallel, one per core) into
    ``root/engines`` once per process. Returns {"root", "results": {precision: (rc, out, err, s)}}."""
    key = str(root)
    if key in _BUILT:
        return _BUILT[key]
    env = dict(os.environ, COLUMNS="200")
    procs = {}
    for p in PRECISIONS:
        cmd = [sys.executable, "-m", "pid_trt.cli.main", *build_args(root, p)]
        procs[p] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True), time.perf_counter())  # fmt: skip
    results = {}
    for p, (proc, start) in procs.items():
        out, err = proc.communicate(timeout=600)
        results[p] = (proc.returncode, out, err, time.perf_counter() - start)
    _BUILT[key] = {"root": root, "results": results}
    return _BUILT[key]


def manifests(engine_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(engine_dir.glob("*.manifest.json"))]
