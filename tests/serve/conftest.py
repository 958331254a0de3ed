"""Helpers of the serving tests: a real ``pidtrt serve`` (tiny preset, random weights) in a
subprocess on free loopback ports, and the checks that it leaves nothing behind.

Only 127.0.0.1, bounded waits, a timeout on every call. The serve extra is required: a
missing package fails the tests (it is never a skip)."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

HOST = "127.0.0.1"
#: Seconds a tiny-preset server may take to start (Triton ~5 s here, more on a busy machine).
START_TIMEOUT_S = 120.0
#: Seconds one request may take (queue and decode) before the test fails.
REQUEST_TIMEOUT_S = 120.0


def request_inputs(config, seed: int, h: int = 1, w: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A request's seeded latent [1, C, h, w] and caption embedding [1, T, D] (float32 numpy)
    for a net of ``config``."""
    gen = torch.Generator().manual_seed(seed)
    lat = torch.randn(1, config.lq_latent_channels, h, w, generator=gen).numpy()
    cap = torch.randn(1, config.txt_max_length, config.txt_embed_dim, generator=gen).numpy()
    return lat, cap


def require_serve_extra() -> None:
    """Fail (never skip) when the serve extra is missing."""
    for module in ("pytriton", "tritonclient.http"):
        try:
            importlib.import_module(module)
        except Exception as exc:
            pytest.fail(
                f"{module} is not usable ({exc}): the serving tests need the [serve] extra; "
                "./scripts/test.sh installs it (or: pip install -e '.[serve]')",
                pytrace=False,
            )


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_free(port: int) -> bool:
    """Nothing listens on ``port`` (connections of the past in TIME_WAIT do not count: a new
    server may bind it, as SO_REUSEADDR servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


@dataclass
class Served:
    """A running ``pidtrt serve`` subprocess."""

    proc: subprocess.Popen
    http: int
    grpc: int
    metrics: int
    workspace: Path
    log: Path
    stdout: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics}/metrics"

    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_server(tmp: Path, *extra: str) -> Served:
    """Start ``pidtrt serve --backbone tiny --random-weights`` and wait until it is ready."""
    require_serve_extra()
    http, grpc, metrics = free_ports(3)
    workspace = tmp / "workspace"
    workspace.mkdir(parents=True, exist_ok=True)
    log = tmp / "serve.log"
    cmd = [
        sys.executable, "-m", "pid_trt.cli.main", "serve", "--backbone", "tiny", "--random-weights",
        "--host", HOST, "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
        "--workspace", str(workspace), *extra,
    ]  # fmt: skip
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True)
    served = Served(proc, http, grpc, metrics, workspace, log)
    ready = threading.Event()

    def read_stdout() -> None:  # the CLI prints one "serving ..." line once every endpoint answers
        for line in proc.stdout:
            served.stdout.append(line)
            if line.startswith("serving pid_decoder"):
                ready.set()

    threading.Thread(target=read_stdout, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready.wait(0.25):
        if proc.poll() is not None:
            pytest.fail(f"pidtrt serve exited with {proc.returncode} before it was ready:\n{served.stderr()}")
        if time.monotonic() > deadline:
            stop_server(served, signal.SIGKILL)
            pytest.fail(f"pidtrt serve not ready after {START_TIMEOUT_S} s:\n{served.stderr()}")
    return served


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and str(os.getpid()) != entry.name:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def stop_server(served: Served, sig: int = signal.SIGINT, timeout_s: float = 60.0) -> int:
    """Send ``sig`` and wait for the server to exit; returns its exit code (kills it after ``timeout_s``)."""
    proc = served.proc
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    return proc.returncode


def assert_nothing_left(served: Served) -> None:
    """No Triton or stub process, no bound port, no /dev/shm region, no workspace left."""
    deadline = time.monotonic() + 15
    while True:
        left = processes_mentioning(str(served.workspace))
        ports = [p for p in (served.http, served.grpc, served.metrics) if not port_free(p)]
        shm = sorted(p.name for p in Path("/dev/shm").glob(f"pidtrt-serve-{served.proc.pid}-*"))
        files = sorted(p.name for p in served.workspace.iterdir())
        if not (left or ports or shm or files) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not left, f"processes left: {left}"
    assert not ports, f"ports still bound: {ports}"
    assert not shm, f"/dev/shm regions left: {shm}"
    assert not files, f"workspace not cleaned: {files}"
