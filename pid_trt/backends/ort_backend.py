"""The ONNX Runtime backend: runs the exported ``prepare.onnx`` once per decode and
``step.onnx`` once per sampler step (:mod:`pid_trt.compile.export`).

Providers: CPU for ``--device cpu``; for ``--device cuda`` the TensorRT and CUDA providers
of onnxruntime-gpu (whichever are present), CPU as fallback. Graph inputs and outputs are
float32 at every precision (the precision is that of the weights and matmuls inside), so the
backend feeds float32 and casts what it gets back to float32. ONNX Runtime's CPU provider
has no bfloat16 MatMul: bf16 graphs need the CUDA provider.

When the export store has no matching graph the backend exports one first (minutes at full
size) and says so through the ``pid_trt`` logger (a warning: shown on stderr by default).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pid_trt.backends.base import Artifacts, Backend, Conditioning, GraphKind
from pid_trt.buckets import Bucket
from pid_trt.config import NetConfig, Precision
from pid_trt.errors import BackendUnavailableError, ConfigError
from pid_trt.sampling import TIMESCALE, Denoiser

if TYPE_CHECKING:
    from pid_trt.backends.factory import BackendRequest
    from pid_trt.stores.exports import ExportResult

log = logging.getLogger("pid_trt.compile.export")  # the exporter's stage lines, shown by the CLI

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            f"onnxruntime is not installed ({exc}): pip install onnxruntime"
        ) from None
    return onnxruntime


_MIB = float(2**20)


def _export(request: BackendRequest) -> ExportResult:
    """The store's export of ``request`` (bucket, batch, precision), exported now if missing."""
    from pid_trt.compile.export import ensure_export
    from pid_trt.stores.keys import ExportKey

    bucket = Bucket(height=request.height, width=request.width)
    key = ExportKey.for_spec(request.spec, bucket, request.precision, request.batch)
    return ensure_export(
        request.spec, key, request.export_dir, load_model=request.load_model,
        on_export=lambda _: log.warning(
            "no ONNX export for %s batch %d %s in %s: exporting it now (minutes at full size)",
            bucket.name, request.batch, request.precision.value, request.export_dir,
        ),
    )  # fmt: skip


def choose_providers(device: str) -> list[str]:
    """ONNX Runtime providers for ``device`` ("cpu" or "cuda[:n]")."""
    available = _ort().get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if not device.startswith("cuda"):
        raise ConfigError(f"--device {device!r}: expected cpu or cuda")
    gpu = [p for p in _GPU_PROVIDERS if p in available]
    if not gpu:
        raise BackendUnavailableError(
            f"--device {device}: onnxruntime has no GPU provider (have {', '.join(available)}); "
            "install onnxruntime-gpu or use --device cpu"
        )
    return gpu + ["CPUExecutionProvider"]


def check_cpu_precision(precision: Precision, providers: list[str]) -> None:
    """Refuse precisions whose graphs ONNX Runtime's CPU provider cannot run: bf16 (no bfloat16
    MatMul / Conv kernels) and fp8 (its graphs are bf16 around the FP8 GEMMs)."""
    if precision in (Precision.BF16, Precision.FP8) and providers == ["CPUExecutionProvider"]:
        raise BackendUnavailableError(
            f"--precision {precision.value}: ONNX Runtime's CPU provider has no bfloat16 kernels"
            f"{' (fp8 graphs are bf16 around the FP8 GEMMs)' if precision is Precision.FP8 else ''}; "
            "use fp32 or fp16 on CPU, or --device cuda with onnxruntime-gpu"
        )


class OrtBackend(Backend):
    """Two ONNX Runtime sessions (prepare, step) for one (bucket, batch, precision) export.

    With ``hoist`` (default) ``bind`` runs prepare once; without it each step re-runs
    prepare first (for measuring what hoisting saves).
    """

    name = "onnxruntime"
    precisions = (Precision.FP32, Precision.FP16, Precision.BF16, Precision.FP8)
    devices = ("cpu", "cuda")
    graph = GraphKind.ONNX
    makes_artifacts = True

    @classmethod
    def default_precision(cls, device: str) -> Precision:
        """fp32 on the CPU provider, fp16 with the CUDA / TensorRT providers."""
        return Precision.FP32 if device == "cpu" else Precision.FP16

    @classmethod
    def unavailable(cls, device: str, precision: Precision) -> str | None:
        reason = super().unavailable(device, precision)
        if reason is not None:
            return reason
        try:
            check_cpu_precision(precision, choose_providers(device))
        except BackendUnavailableError as exc:
            return str(exc)
        return None

    def __init__(
        self, prepare_path: Path, step_path: Path, config: NetConfig, bucket: Bucket, batch: int,
        precision: Precision = Precision.FP32, providers: list[str] | None = None, hoist: bool = True,
        size_bytes: int | None = None,
    ) -> None:  # fmt: skip
        ort = _ort()
        providers = providers or ["CPUExecutionProvider"]
        check_cpu_precision(precision, providers)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # One thread knob for every backend: follow torch's intra-op threads (torch.set_num_threads,
        # `pidtrt bench --threads`); both default to the physical cores. Sequential execution
        # and the memory pattern planner are ORT's defaults and the fastest here (benchmarks/README.md).
        opts.intra_op_num_threads = torch.get_num_threads()
        self.prepare_session = ort.InferenceSession(str(prepare_path), opts, providers=providers)
        self.step_session = ort.InferenceSession(str(step_path), opts, providers=providers)
        self.config, self.bucket, self.batch = config, bucket, batch
        self.precision, self.hoist, self.providers = precision, hoist, providers
        self.size_bytes = size_bytes  # the export's files on disk
        for sess in (self.prepare_session, self.step_session):
            for arg in sess.get_inputs():
                if arg.type != "tensor(float)":
                    raise ConfigError(f"graph input {arg.name} is {arg.type}: expected tensor(float)")

    @classmethod
    def from_request(cls, request: BackendRequest) -> OrtBackend:
        """Open (exporting first if needed) the graphs for ``request`` (a BackendRequest)."""
        providers = choose_providers(request.device)
        check_cpu_precision(request.precision, providers)  # before exporting a graph it could not run
        found = _export(request)
        return cls(
            found.prepare, found.step, request.spec.config, Bucket(height=request.height, width=request.width),
            request.batch, request.precision, providers, request.hoist, found.size_bytes,
        )  # fmt: skip

    @classmethod
    def make_artifacts(cls, request: BackendRequest) -> Artifacts:
        """The ONNX export of ``request`` (made now when the store has none: build_s its time)."""
        start = time.perf_counter()
        found = _export(request)
        return Artifacts(
            engine_mb=found.size_bytes / _MIB, build_s=time.perf_counter() - start if found.built else None
        )

    def artifacts(self) -> Artifacts:
        """The export's size and the sessions' intra-op threads."""
        threads = self.step_session.get_session_options().intra_op_num_threads if self.step_session else 0
        mb = self.size_bytes / _MIB if self.size_bytes is not None else None
        return Artifacts(engine_mb=mb, threads=threads or None)

    def _prepare(self, caption: np.ndarray, latent: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.prepare_session.run(None, {"caption": caption, "latent": latent})
        names = [o.name for o in self.prepare_session.get_outputs()]
        return dict(zip(names, outs, strict=True))

    def bind(self, cond: Conditioning) -> Denoiser:
        c = self.config
        if cond.batch != self.batch:
            raise ConfigError(f"batch {cond.batch}: this ONNX export was made for batch {self.batch}")
        if (cond.height, cond.width) != (self.bucket.height, self.bucket.width):
            raise ConfigError(f"image {cond.width}x{cond.height}: this ONNX export is for {self.bucket.name}")
        want_lat = tuple(self.prepare_session.get_inputs()[1].shape)
        latent = cond.latent.detach().to("cpu", torch.float32).contiguous().numpy()
        if tuple(latent.shape) != want_lat:
            raise ConfigError(f"latent shape {tuple(latent.shape)}: this ONNX export takes {list(want_lat)}")
        caption = cond.caption.detach().to("cpu", torch.float32)[:, : c.txt_max_length].contiguous().numpy()
        if caption.shape[1] != c.txt_max_length:
            raise ConfigError(
                f"caption embedding of {caption.shape[1]} tokens: the ONNX export takes {c.txt_max_length} "
                "(pad the caption to txt_max_length)"
            )
        sigma = cond.degrade_sigma.detach().to("cpu", torch.float32).reshape(self.batch).numpy()
        prepared = self._prepare(caption, latent) if self.hoist else None
        step = self.step_session

        def denoise(x: torch.Tensor, t: float) -> torch.Tensor:
            feeds = dict(prepared) if prepared is not None else self._prepare(caption, latent)
            feeds["x"] = x.detach().to("cpu", torch.float32).contiguous().numpy()
            feeds["t"] = np.full((self.batch,), t * TIMESCALE, dtype=np.float32)
            feeds["degrade_sigma"] = sigma
            (v,) = step.run(None, feeds)
            return torch.from_numpy(np.asarray(v, dtype=np.float32)).to(x.device)

        return denoise

    def close(self) -> None:
        self.prepare_session = None
        self.step_session = None
