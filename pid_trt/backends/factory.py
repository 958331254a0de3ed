"""Construct a backend for one (size, batch) from resolved runtime options."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pid_trt.backends.base import Backend
from pid_trt.backends.registry import backend_class
from pid_trt.config import Precision
from pid_trt.errors import BackendUnavailableError

if TYPE_CHECKING:
    from pid_trt.model import PidNet
    from pid_trt.netspec import NetSpec
    from pid_trt.options import RuntimeOptions


@dataclass(frozen=True)
class BackendRequest:
    """One backend to construct.

    spec: the resolved network (config + weights); runtime: resolved
    :class:`pid_trt.options.RuntimeOptions` (backend name, precision, device, stores, hoist,
    CUDA graph); height / width: output size in pixels; batch: B; model_loader: returns the
    fp32 CPU reference model with the spec's weights (default: build it from the spec;
    :class:`pid_trt.Decoder` passes one that reads the weights once).
    """

    spec: NetSpec
    runtime: RuntimeOptions
    height: int = 0
    width: int = 0
    batch: int = 1
    model_loader: Callable[[], PidNet] | None = field(default=None, compare=False)

    def sized(self, height: int, width: int, batch: int) -> BackendRequest:
        return dataclasses.replace(self, height=height, width=width, batch=batch)

    def load_model(self) -> PidNet:
        """The reference model (fp32, CPU) with the spec's weights."""
        if self.model_loader is not None:
            return self.model_loader()
        from pid_trt.netspec import build_model

        return build_model(self.spec)

    @property
    def backend(self) -> str:
        return self.runtime.backend

    @property
    def precision(self) -> Precision:
        return self.runtime.precision_enum

    @property
    def device(self) -> str:
        return str(self.runtime.device)

    @property
    def engine_dir(self) -> Path:
        return Path(self.runtime.engine_dir)

    @property
    def export_dir(self) -> Path:
        return Path(self.runtime.export_dir)

    @property
    def hoist(self) -> bool:
        return self.runtime.hoist

    @property
    def cuda_graph(self) -> bool:
        return self.runtime.cuda_graph

    @property
    def torch_device(self) -> torch.device:
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"--device {self.device}: no CUDA device is available to torch (run with --device cpu)"
            )
        return torch.device(self.device)


def create_backend(request: BackendRequest) -> Backend:
    """Construct the requested backend (imports its module, and so its optional dependency, only now)."""
    return backend_class(request.backend).from_request(request)
