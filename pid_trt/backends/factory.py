"""Construct a backend for one (size, batch) from a resolved :class:`pid_trt.options.Runtime`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pid_trt.backends.base import Backend
from pid_trt.config import Precision
from pid_trt.errors import BackendUnavailableError

if TYPE_CHECKING:
    from pid_trt.model import PidNet
    from pid_trt.netspec import NetSpec
    from pid_trt.options import Runtime


@dataclass(frozen=True)
class BackendRequest:
    """One backend to construct.

    spec: the resolved network (config + weights); runtime: the resolved
    :class:`pid_trt.options.Runtime` (backend class, precision, device, stores, hoist,
    CUDA graph); height / width: output size in pixels; batch: B; model_loader: returns the
    fp32 CPU reference model with the spec's weights (default: build it from the spec;
    :class:`pid_trt.Decoder` passes one that reads the weights once).
    """

    spec: NetSpec
    runtime: Runtime
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
    def backend(self) -> type[Backend]:
        return self.runtime.backend

    @property
    def precision(self) -> Precision:
        return self.runtime.precision

    @property
    def device(self) -> str:
        return self.runtime.device

    @property
    def engine_dir(self) -> Path:
        return self.runtime.engine_dir

    @property
    def export_dir(self) -> Path:
        return self.runtime.export_dir

    def on(self, device: str) -> BackendRequest:
        """The same request on ``device`` (a device name already checked)."""
        return dataclasses.replace(self, runtime=self.runtime.on(device))

    @property
    def hoist(self) -> bool:
        return self.runtime.hoist

    @property
    def cuda_graph(self) -> bool:
        return self.runtime.cuda_graph

    @property
    def torch_device(self) -> torch.device:
        return check_torch_device(self.device)


def check_torch_device(device: str) -> torch.device:
    """``device`` as a :class:`torch.device`; a one-line BackendUnavailableError for CUDA
    where torch sees none."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"--device {device}: no CUDA device is available to torch (run with --device cpu)"
        )
    return torch.device(device)


def create_backend(request: BackendRequest) -> Backend:
    """Construct the requested backend (imports its module, and so its optional dependency, only now)."""
    return request.backend.from_request(request)
