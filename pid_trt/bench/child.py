"""One benchmark case in a fresh process, so peak RSS and allocator state are its own.

The parent writes a job (JSON) to the child's stdin; the child prints one line
``PIDTRT_BENCH_RESULT <json>`` on stdout. Job modes: ``prepare`` (make the artifacts the
backend needs before it loads: :meth:`pid_trt.backends.base.Backend.make_artifacts`) and
``measure`` (:func:`pid_trt.bench.runner.measure`).
Outcome classes: a missing optional package, GPU or engine is ``skipped``; anything else
that raises is ``failed``; both carry a one-line reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pid_trt.bench.records import Status
from pid_trt.errors import ConfigError

RESULT_PREFIX = "PIDTRT_BENCH_RESULT "


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def _run(job: dict[str, Any]) -> dict[str, Any]:
    from pid_trt.bench.cases import BenchCase
    from pid_trt.bench.runner import make_artifacts, measure
    from pid_trt.options import NetOptions

    case = BenchCase.from_dict(job["case"])
    spec = NetOptions.from_dict(job["net"]).resolve()
    if job["mode"] == "prepare":
        return {"status": "ok", "artifacts": dataclasses.asdict(make_artifacts(spec, case))}
    m = measure(case, spec, int(job["warmup"]), int(job["runs"]), int(job.get("seed", 0)), job.get("threads"))
    out = dataclasses.asdict(m)
    out["status"] = "ok"
    return out


def main() -> None:
    """Child entry point: read the job from stdin, print the result line."""
    from pid_trt.errors import BackendUnavailableError, StoreError

    try:
        result = _run(json.loads(sys.stdin.read()))
    except (BackendUnavailableError, StoreError) as exc:
        result = {"status": Status.SKIPPED.value, "reason": _one_line(exc)}
    except Exception as exc:  # noqa: BLE001 - every failure becomes a record, not a crash
        result = {"status": Status.FAILED.value, "reason": f"{type(exc).__name__}: {_one_line(exc)}"}
    sys.stdout.write("\n" + RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_job(job: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``job`` in a fresh ``python -m pid_trt.bench.child``; its result dict.

    A child that dies (killed, out of memory) or times out gives status ``failed`` with the
    last line of its stderr as the reason.
    """
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pid_trt.bench.child"], input=json.dumps(job), capture_output=True,
            text=True, timeout=timeout_s, env=env, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"status": Status.FAILED.value, "reason": f"timed out after {timeout_s:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            try:
                return json.loads(line[len(RESULT_PREFIX) :])
            except json.JSONDecodeError as exc:
                raise ConfigError(f"benchmark child printed a malformed result ({exc})") from None
    tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or [f"exit code {proc.returncode}"]
    return {
        "status": Status.FAILED.value,
        "reason": f"child process died (rc {proc.returncode}): {tail[0][:300]}",
    }


if __name__ == "__main__":
    main()
