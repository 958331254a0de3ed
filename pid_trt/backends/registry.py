"""Backend names -> backend classes, imported only when asked for, and the one grammar
``NAME[:PRECISION][@DEVICE]`` that ``--backend``, ``verify --against`` and ``bench`` take.

Adding a backend is one module with a :class:`pid_trt.backends.base.Backend` subclass and
one line in :data:`BACKENDS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from pid_trt.config import Precision
from pid_trt.errors import ConfigError
from pid_trt.quoting import quote

if TYPE_CHECKING:
    from pid_trt.backends.base import Backend

#: ``--backend`` name -> "module:Class" (the module is imported on first use).
BACKENDS: dict[str, str] = {
    "torch": "pid_trt.backends.torch_backend:TorchBackend",
    "torch-compile": "pid_trt.backends.compiled_backend:TorchCompileBackend",
    "onnxruntime": "pid_trt.backends.ort_backend:OrtBackend",
    "tensorrt": "pid_trt.backends.trt_backend:TrtBackend",
}


class GraphKind(str, Enum):
    """What a backend runs (:attr:`Backend.graph`): the torch module, exported ONNX graphs, or
    TensorRT engine plans."""

    TORCH = "torch"
    ONNX = "onnx"
    PLAN = "plan"


def backend_class(name: str, option: str = "--backend") -> type[Backend]:
    """The class registered as ``name`` (raises ConfigError naming the known ones)."""
    target = BACKENDS.get(str(name).strip().lower())
    if target is None:
        raise ConfigError(f"{option} {quote(name)} is not known: expected one of {', '.join(BACKENDS)}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def parse_precision(text: str | Precision, option: str = "--precision") -> Precision:
    """``fp32`` | ``fp16`` | ``bf16`` | ``fp8`` -> :class:`Precision` (one-line ConfigError)."""
    if isinstance(text, Precision):
        return text
    try:
        return Precision(str(text).strip().lower())
    except ValueError:
        allowed = ", ".join(p.value for p in Precision)
        raise ConfigError(f"{option} {quote(text)} is not known: expected one of {allowed}") from None


def check_device(device: str, option: str = "--device") -> str:
    """``cpu`` | ``cuda`` | ``cuda:N`` (lower-cased), else a one-line ConfigError."""
    dev = str(device).strip().lower()
    if dev in ("cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()):
        return dev
    raise ConfigError(f"{option} {quote(device)}: expected cpu or cuda")


def device_kind(device: str) -> str:
    """``cuda`` for ``cuda`` / ``cuda:N``, else ``cpu`` (the kinds in :attr:`Backend.devices`)."""
    return "cuda" if device.startswith("cuda") else "cpu"


@dataclass(frozen=True)
class BackendSpec:
    """A backend as the user wrote it: ``NAME[:PRECISION][@DEVICE]`` (``tensorrt:fp8``,
    ``torch:bf16@cuda:1``); precision and device are None where not written."""

    name: str
    precision: Precision | None = None
    device: str | None = None

    @classmethod
    def parse(cls, text: str, option: str = "--backend") -> BackendSpec:
        rest, _, dev = str(text).strip().partition("@")
        name, _, prec = rest.partition(":")
        name = name.strip().lower()
        if name not in BACKENDS:
            raise ConfigError(
                f"{option} {quote(text)} is not known: expected NAME[:PRECISION][@DEVICE] with NAME one of "
                f"{', '.join(BACKENDS)}"
            )
        precision = parse_precision(prec, option=f"{option} {quote(text)}: precision") if prec else None
        device = check_device(dev, option=f"{option} {quote(text)}: device") if dev else None
        return cls(name, precision, device)

    @property
    def cls(self) -> type[Backend]:
        return backend_class(self.name)
