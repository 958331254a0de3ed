"""What to benchmark: backends (with precision and device), sizes, batches, hoist variants."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pid_trt.config import Precision
from pid_trt.errors import ConfigError


class BenchBackend(str, Enum):
    """Backends ``pidtrt bench`` knows. torch-compile is the torch backend under torch.compile."""

    TORCH = "torch"
    TORCH_COMPILE = "torch-compile"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"

    @property
    def supports_no_hoist(self) -> bool:
        """Whether the backend can re-run the per-decode work every step (TensorRT engines can't)."""
        return self is not BenchBackend.TENSORRT

    @property
    def factory_kind(self) -> str:
        """The :class:`pid_trt.backends.factory.BackendKind` value it runs on."""
        return "torch" if self is BenchBackend.TORCH_COMPILE else self.value


def default_precision(backend: BenchBackend, device: str) -> Precision:
    """fp32 on CPU (bf16 matmuls are slow or missing there); bf16 eager / fp16 ORT+TRT on GPU."""
    if backend is BenchBackend.TENSORRT:
        return Precision.FP16
    if device == "cpu":
        return Precision.FP32
    return Precision.FP16 if backend is BenchBackend.ONNXRUNTIME else Precision.BF16


@dataclass(frozen=True)
class BenchTarget:
    """One backend at one precision on one device ("cpu" or "cuda[:n]")."""

    backend: BenchBackend
    precision: Precision
    device: str


def parse_target(text: str, dtype: str | None, device: str) -> BenchTarget:
    """``NAME[:PRECISION][@DEVICE]`` (e.g. ``tensorrt:fp8``, ``torch:fp32@cpu``) -> target.

    Precision defaults to ``dtype`` or :func:`default_precision`; device to ``device``
    (tensorrt always runs on cuda).
    """
    name, _, dev = text.strip().partition("@")
    name, _, prec = name.partition(":")
    try:
        backend = BenchBackend(name.strip().lower())
    except ValueError:
        allowed = ", ".join(b.value for b in BenchBackend)
        raise ConfigError(
            f"--backend {text!r}: expected one of {allowed} (optionally :PRECISION@DEVICE)"
        ) from None
    dev = (dev or device).strip().lower()
    if dev != "cpu" and not dev.startswith("cuda"):
        raise ConfigError(f"--backend {text!r}: device {dev!r} is not cpu or cuda")
    if backend is BenchBackend.TENSORRT and dev == "cpu":
        dev = "cuda"
    prec = prec or dtype
    try:
        precision = Precision(prec.lower()) if prec else default_precision(backend, dev)
    except ValueError:
        raise ConfigError(f"--backend {text!r}: precision {prec!r} is not fp32, fp16, bf16 or fp8") from None
    return BenchTarget(backend, precision, dev)


@dataclass(frozen=True)
class NetArgs:
    """The model options of the command line, kept as given so a child process can resolve them
    (:func:`pid_trt.netspec.resolve_net`)."""

    backbone: str | None = None
    ckpt_type: str | None = None
    checkpoint: str | None = None
    net_config: str | None = None
    random_weights: bool = False
    weights_seed: int = 0

    def resolve(self) -> Any:
        """The :class:`pid_trt.netspec.NetSpec` (raises ConfigError when incomplete)."""
        from pid_trt.netspec import resolve_net

        return resolve_net(
            self.backbone, self.ckpt_type, Path(self.checkpoint) if self.checkpoint else None,
            Path(self.net_config) if self.net_config else None, self.random_weights, self.weights_seed,
        )  # fmt: skip


@dataclass(frozen=True)
class BenchCase:
    """One measured configuration. height / width: output pixels; batch: images per decode."""

    target: BenchTarget
    height: int
    width: int
    batch: int
    hoist: bool
    steps: int = 4

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target"] = {"backend": self.target.backend.value, "precision": self.target.precision.value,
                       "device": self.target.device}  # fmt: skip
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchCase:
        t = d["target"]
        target = BenchTarget(BenchBackend(t["backend"]), Precision(t["precision"]), t["device"])
        return cls(
            target, int(d["height"]), int(d["width"]), int(d["batch"]), bool(d["hoist"]), int(d["steps"])
        )


def expand_cases(
    targets: list[BenchTarget],
    sizes: list[tuple[int, int]],
    batches: list[int],
    hoists: tuple[bool, ...],
    steps: int = 4,
) -> list[BenchCase]:
    """Every target x size x batch x hoist, in that nesting order (size outermost); a backend
    that cannot run un-hoisted gets its hoisted variant only."""
    if not targets or not sizes or not batches or not hoists:
        raise ConfigError("bench: expected at least one backend, size, batch and hoist variant")
    for b in batches:
        if b < 1:
            raise ConfigError(f"--batch {b}: expected a positive integer")
    cases = []
    for (h, w), batch, target in itertools.product(sizes, batches, targets):
        mine = hoists if target.backend.supports_no_hoist else (True,)
        for hoist in dict.fromkeys(mine):
            cases.append(BenchCase(target, h, w, batch, hoist, steps))
    return cases
