"""Start and stop ``tritonserver`` serving :data:`~pid_trt.serve.config.MODEL_NAME`.

The ``tritonserver`` binary, its Python backend and the backend's stub come from the
``nvidia-pytriton`` wheel (pip extra ``serve``). :class:`PidServer` writes, in a private
workspace (a fresh temp folder, removed on stop):

- ``backends/python/``: links to the wheel's Python backend and the stub built for this
  Python (3.x);
- ``repository/pid_decoder/``: ``config.pbtxt`` (:func:`~pid_trt.serve.config.model_config_pbtxt`;
  its parameters: the net's input sizes, what each output is and how the PNG travels, the
  caption cache's size), ``options.json`` (:class:`~pid_trt.serve.config.ModelOptions`) and ``1/model.py``.

then runs ``tritonserver`` in its own session (so a terminal's Ctrl-C reaches ``pidtrt
serve`` only, which stops Triton once, gracefully), tied to this process's life
(``PR_SET_PDEATHSIG``: if ``pidtrt serve`` is killed, Triton gets SIGTERM). The stub runs
this Python: its directory comes first on ``PATH`` and its ``libpython`` first on
``LD_LIBRARY_PATH`` (a Python built outside the system, pyenv say, would otherwise load the
system's older ``libpython3.x.so`` and the model fails to load). Triton's Python backend
moves tensors through ``/dev/shm`` regions named ``pidtrt-serve-<pid>-...``; :meth:`stop`
removes any left behind.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pid_trt.errors import BackendUnavailableError, ConfigError, PidTrtError
from pid_trt.serve.config import MODEL_NAME, ModelOptions, ServeOptions, model_config_pbtxt
from pid_trt.serve.protocol import OUTPUT_DOCS

#: Bytes of each instance's shared-memory region at start, and the step it grows by.
SHM_DEFAULT_BYTES = 16 << 20
SHM_GROWTH_BYTES = 64 << 20
#: Triton's start-up lines that only say there is no GPU (hidden on a CPU-only server unless --verbose).
_NO_GPU_NOISE = (
    "CudaDriverHelper has not been initialized",
    "Unable to allocate pinned system memory",
    "Failed to initialize NVML",
    "DCGM unable to start",
)
#: Seconds Triton gets to finish in-flight requests on stop before it is killed.
STOP_TIMEOUT_S = 30.0

_MODEL_PY = '"""Triton loads this file; the model is pid_trt.serve.model."""\n\n' + (
    "from pid_trt.serve.model import TritonPythonModel  # noqa: F401\n"
)


class ServerError(PidTrtError):
    """``tritonserver`` could not start, or stopped on its own."""


def _tritonserver_dist() -> Path:
    try:
        import pytriton
    except ImportError:
        raise BackendUnavailableError(
            "pidtrt serve needs the serve extra: pip install 'pid-trt[serve]' (nvidia-pytriton, numpy<2)"
        ) from None
    dist = Path(pytriton.__file__).parent / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise BackendUnavailableError(f"nvidia-pytriton at {dist.parent} has no tritonserver binary")
    return dist


def _check_numpy() -> None:
    import numpy as np

    if int(np.__version__.split(".")[0]) >= 2:
        raise BackendUnavailableError(
            f"numpy {np.__version__}: Triton's Python backend (nvidia-pytriton 0.7) needs numpy < 2 "
            "(with numpy 2 it returns empty outputs); pip install 'numpy<2'"
        )


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past connections in TIME_WAIT do not count
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _loopback(host: str) -> str:
    """The address to reach a server bound to ``host`` from this machine."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class PidServer:
    """``tritonserver`` serving ``pid_decoder``; use as a context manager or start / stop.

    ``workspace``: folder under which the run's temp workspace is made (default: the
    system's temp folder); ``log``: where Triton's own output goes (default stderr).
    """

    def __init__(
        self,
        model: ModelOptions,
        serve: ServeOptions,
        workspace: str | os.PathLike[str] | None = None,
        log=None,
    ) -> None:
        self.model, self.serve = model, serve
        self._parent = Path(workspace) if workspace is not None else None
        self._log = log if log is not None else sys.stderr
        self.workspace: Path | None = None
        self.net: dict[str, str] = {}  # the net's facts (ModelOptions.check), once started
        self.process: subprocess.Popen | None = None
        self.shm_prefix = f"pidtrt-serve-{os.getpid()}-"
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._reader: threading.Thread | None = None

    # ------------------------------------------------------------------ addresses
    @property
    def http_url(self) -> str:
        return f"http://{_loopback(self.serve.host)}:{self.serve.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_loopback(self.serve.host)}:{self.serve.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_loopback(self.serve.host)}:{self.serve.metrics_port}/metrics"

    # ------------------------------------------------------------------ lifetime
    def start(self) -> None:
        """Check the options, write the workspace and start ``tritonserver`` (not yet ready:
        see :meth:`wait_ready`). Raises the project's one-line errors."""
        _check_numpy()
        dist = _tritonserver_dist()
        net = self.net = self.model.check()
        self._check_devices()
        for name, port in (("--http-port", self.serve.http_port), ("--grpc-port", self.serve.grpc_port),
                           ("--metrics-port", self.serve.metrics_port)):  # fmt: skip
            if not _port_free(self.serve.host, port):
                raise ConfigError(f"{name} {port}: {self.serve.host}:{port} is in use; pick another port")
        if self._parent is not None:
            self._parent.mkdir(parents=True, exist_ok=True)
        self.workspace = Path(tempfile.mkdtemp(prefix="pidtrt-serve-", dir=self._parent))
        try:
            backends = self._write_backends(dist)
            repo = self._write_repository(net)
            cmd = self._command(dist, backends, repo)
            self.process = subprocess.Popen(
                cmd, env=self._env(dist), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        except BaseException:
            self._cleanup()
            raise
        self._reader = threading.Thread(target=self._pump, name="tritonserver-log", daemon=True)
        self._reader.start()

    def wait_ready(
        self, timeout_s: float | None = None, poll_s: float = 0.2, cancel: threading.Event | None = None
    ) -> bool:
        """Block until ``/v2/health/ready`` answers 200 (every instance has loaded its
        Decoder) and the metrics page answers: True; False when ``cancel`` is set first.
        Raises :class:`ServerError` when Triton exits first (naming the model's load error
        when there is one) or after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pending = [f"{self.http_url}/v2/health/ready", self.metrics_url]
        cancel = cancel or threading.Event()
        while not cancel.is_set():
            if self.process is None or self.process.poll() is not None:
                raise ServerError(self._exit_reason())
            try:
                with urllib.request.urlopen(pending[0], timeout=2.0) as resp:
                    if resp.status == 200:
                        pending.pop(0)
                        if not pending:
                            return True
                        continue
            except (urllib.error.URLError, OSError):
                pass
            if deadline is not None and time.monotonic() > deadline:
                raise ServerError(f"tritonserver not ready after {timeout_s:g} s ({pending[0]})")
            cancel.wait(poll_s)
        return False

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Exit code of ``tritonserver`` once it has exited (None after ``timeout_s``)."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Stop Triton (SIGINT: it refuses new requests and finishes those in flight, for
        at most ``timeout_s``; then SIGKILL to its process group), then remove the
        workspace and any ``/dev/shm`` region left. Idempotent; returns Triton's exit code."""
        code = None
        proc = self.process
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGINT)
                    code = proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    self._kill_group(proc)
                    code = proc.wait(timeout=10)
            else:
                code = proc.returncode
            self._kill_group(proc)  # stubs that outlived their server, if any
            if self._reader is not None:
                self._reader.join(timeout=5)
        self._cleanup()
        return code

    def __enter__(self) -> PidServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals
    def _check_devices(self) -> None:
        if not self.serve.devices:
            return
        if self.model.device is not None and not self.model.device.startswith("cuda"):
            raise ConfigError(
                f"--gpus and --device {self.model.device} exclude each other: --gpus places the instances"
            )
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        shown = ",".join(map(str, self.serve.devices))
        if count == 0:
            raise BackendUnavailableError(
                f"--gpus {shown}: no CUDA device is visible (use --instances on the CPU)"
            )
        if max(self.serve.devices) >= count:
            raise ConfigError(f"--gpus {shown}: only {count} CUDA device(s) visible (ids 0..{count - 1})")

    def _write_backends(self, dist: Path) -> Path:
        assert self.workspace is not None
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise BackendUnavailableError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
        python = self.workspace / "backends" / "python"
        python.mkdir(parents=True)
        for src in (dist / "backends" / "python").iterdir():
            if src.is_file():
                (python / src.name).symlink_to(src)
        (python / stub.name).symlink_to(stub)
        return python.parent

    def _write_repository(self, net: dict[str, str]) -> Path:
        assert self.workspace is not None
        repo = self.workspace / "repository"
        model = repo / MODEL_NAME
        (model / "1").mkdir(parents=True)
        # The net's facts, what each output is and how the PNG travels (pid_trt.serve.protocol).
        params = {**net, **OUTPUT_DOCS, "caption_cache": str(self.model.caption_cache)}
        (model / "config.pbtxt").write_text(model_config_pbtxt(self.serve, params))
        (model / "options.json").write_text(self.model.to_json())
        (model / "1" / "model.py").write_text(_MODEL_PY)
        return repo

    def _command(self, dist: Path, backends: Path, repo: Path) -> list[str]:
        s = self.serve
        info = "true" if s.verbose else "false"
        return [
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={repo}",
            f"--backend-directory={backends}",
            f"--cache-directory={dist / 'caches'}",
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={int(STOP_TIMEOUT_S)}",
            f"--http-address={s.host}",
            f"--http-port={s.http_port}",
            f"--grpc-address={s.host}",
            f"--grpc-port={s.grpc_port}",
            "--allow-metrics=true",
            f"--allow-gpu-metrics={'true' if s.devices else 'false'}",
            "--allow-cpu-metrics=true",
            f"--metrics-address={s.host}",
            f"--metrics-port={s.metrics_port}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
            f"--log-info={info}",
            *([] if s.devices else ["--pinned-memory-pool-byte-size=0"]),
            "--log-warning=true",
            "--log-error=true",
        ]

    def _env(self, dist: Path) -> dict[str, str]:
        env = os.environ.copy()
        libs = [dist.parent.parent / "nvidia_pytriton.libs"]
        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir and any(Path(libdir).glob("libpython3*.so*")):
            libs.insert(0, Path(libdir))
        old = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = ":".join([*(str(p) for p in libs), *([old] if old else [])])
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        root = str(Path(__file__).resolve().parents[2])  # the folder holding pid_trt: same code in the stub
        env["PYTHONPATH"] = ":".join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
        return env

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", errors="replace")
            self._tail.append(line.rstrip())
            if not (self.serve.verbose or self.serve.devices) and any(n in line for n in _NO_GPU_NOISE):
                continue
            try:
                self._log.write(line)
                self._log.flush()
            except (OSError, ValueError):
                pass

    def _exit_reason(self) -> str:
        code = self.process.poll() if self.process is not None else None
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.workspace is not None:
            err = self.workspace / "repository" / MODEL_NAME / "load_error.txt"
            if err.is_file():
                return f"model {MODEL_NAME} failed to load: {err.read_text().strip()}"
        errors = [line for line in self._tail if line[:1] == "E" or "error" in line.lower()]
        last = errors[-1] if errors else (self._tail[-1] if self._tail else "no output")
        return f"tritonserver exited with code {code} before it was ready: {' '.join(last.split())}"

    def _kill_group(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _cleanup(self) -> None:
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None
        for leftover in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            try:
                leftover.unlink()
            except OSError:
                pass


def serve_until_signal(server: PidServer, on_ready: Callable[[float], None]) -> int | None:
    """Start ``server``, call ``on_ready(seconds to ready)`` once it answers, and serve until
    SIGINT / SIGTERM (or until tritonserver exits on its own: :class:`ServerError`); always
    stops it. Returns tritonserver's exit code. Run it in the main thread (signal handlers)."""
    import signal
    import threading

    stop = threading.Event()
    previous = {
        s: signal.signal(s, lambda signum, frame: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)
    }
    start = time.perf_counter()
    try:
        server.start()
        if not server.wait_ready(cancel=stop):
            return server.stop()
        on_ready(time.perf_counter() - start)
        while not stop.is_set():
            if server.wait(timeout_s=0.5) is not None:
                raise ServerError(f"tritonserver exited on its own with code {server.process.returncode}")
    finally:
        code = server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code
