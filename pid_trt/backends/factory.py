"""Pick and construct a backend from what the user asked for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import torch

from pid_trt.backends.base import Backend
from pid_trt.config import Precision
from pid_trt.errors import BackendUnavailableError, ConfigError


class BackendKind(str, Enum):
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


@dataclass(frozen=True)
class BackendRequest:
    """One decode's backend choice.

    kind: backend name (str or BackendKind); spec: pid_trt.netspec.NetSpec (config +
    weights); device: "cpu" or "cuda"; dtype: precision name; height / width: output size
    in pixels; batch: B; engine_dir / export_dir: artifact stores; hoist: run the per-decode
    constant work (latent adapter, caption projection) once instead of every step;
    cuda_graph: replay the step engine as a CUDA graph (tensorrt backend); model_loader: returns
    the fp32 CPU reference model with the spec's weights (default: build it from the spec;
    :class:`pid_trt.Decoder` passes one that reads the weights once).
    """

    kind: str
    spec: object
    device: str = "cpu"
    dtype: str = "fp32"
    height: int = 0
    width: int = 0
    batch: int = 1
    engine_dir: Path = Path("engines")
    export_dir: Path = Path("export")
    hoist: bool = True
    cuda_graph: bool = False
    model_loader: Callable[[], torch.nn.Module] | None = field(default=None, compare=False)

    def load_model(self) -> torch.nn.Module:
        """The reference model (fp32, CPU) with the spec's weights."""
        if self.model_loader is not None:
            return self.model_loader()
        from pid_trt.netspec import build_model

        return build_model(self.spec)

    @property
    def backend_kind(self) -> BackendKind:
        try:
            return BackendKind(self.kind)
        except ValueError:
            allowed = ", ".join(k.value for k in BackendKind)
            raise ConfigError(f"--backend {self.kind!r} is not known: expected one of {allowed}") from None

    @property
    def precision(self) -> Precision:
        try:
            return Precision(self.dtype)
        except ValueError:
            allowed = ", ".join(p.value for p in Precision)
            raise ConfigError(f"--dtype {self.dtype!r} is not known: expected one of {allowed}") from None

    @property
    def torch_device(self) -> torch.device:
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"--device {self.device!r}: expected cpu or cuda")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"--device {self.device}: no CUDA device is available to torch (run with --device cpu)"
            )
        return torch.device(self.device)


def create_backend(request: BackendRequest) -> Backend:
    """Construct the requested backend (imports its optional dependency only now)."""
    kind = request.backend_kind
    if kind is BackendKind.TORCH:
        from pid_trt.backends.torch_backend import TorchBackend

        return TorchBackend.from_request(request)
    if kind is BackendKind.ONNXRUNTIME:
        from pid_trt.backends.ort_backend import OrtBackend

        return OrtBackend.from_request(request)
    from pid_trt.backends.trt_backend import TrtBackend

    return TrtBackend.from_request(request)
