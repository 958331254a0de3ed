"""What to benchmark: backends (with precision and device), sizes, batches, hoist variants."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

from pid_trt.backends.registry import BackendSpec, backend_class, check_device, parse_precision
from pid_trt.config import Precision
from pid_trt.errors import ConfigError


@dataclass(frozen=True)
class BenchTarget:
    """One backend (a registered name, :mod:`pid_trt.backends.registry`) at one precision on
    one device ("cpu" or "cuda[:n]")."""

    backend: str
    precision: Precision
    device: str

    @property
    def can_unhoist(self) -> bool:
        """Whether the backend can re-run the per-decode work every step (TensorRT engines can't)."""
        return backend_class(self.backend).can_unhoist


def parse_target(text: str, precision: str | None, device: str) -> BenchTarget:
    """``NAME[:PRECISION][@DEVICE]`` (e.g. ``tensorrt:fp8``, ``torch:fp32@cpu``) -> target.

    Precision defaults to ``precision`` or the backend's default on the device; device to
    ``device``, or the backend's own device when it cannot run there (tensorrt: cuda).
    """
    spec = BackendSpec.parse(text)
    cls = spec.cls
    dev = spec.device or check_device(device)
    if ("cuda" if dev.startswith("cuda") else "cpu") not in cls.devices:
        dev = cls.default_device()
    chosen = spec.precision or (parse_precision(precision) if precision else cls.default_precision(dev))
    return BenchTarget(cls.name, chosen, dev)


@dataclass(frozen=True)
class BenchCase:
    """One measured configuration. height / width: output pixels; batch: images per decode;
    tiling: the tiling keywords of :meth:`pid_trt.Decoder.decode` as (name, value) pairs, the
    decode running as its plan says (:meth:`pid_trt.Decoder.plan`); empty: one shot at any size."""

    target: BenchTarget
    height: int
    width: int
    batch: int
    hoist: bool
    steps: int = 4
    tiling: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target"] = {"backend": self.target.backend, "precision": self.target.precision.value,
                       "device": self.target.device}  # fmt: skip
        d["tiling"] = dict(self.tiling)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchCase:
        t = d["target"]
        target = BenchTarget(str(t["backend"]), Precision(t["precision"]), t["device"])
        tiling = tuple(sorted((d.get("tiling") or {}).items()))
        return cls(
            target,
            int(d["height"]),
            int(d["width"]),
            int(d["batch"]),
            bool(d["hoist"]),
            int(d["steps"]),
            tiling,
        )


def expand_cases(
    targets: list[BenchTarget],
    sizes: list[tuple[int, int]],
    batches: list[int],
    hoists: tuple[bool, ...],
    steps: int = 4,
    tiling: dict[str, Any] | None = None,
) -> list[BenchCase]:
    """Every target x size x batch x hoist, in that nesting order (size outermost); a backend
    that cannot run un-hoisted gets its hoisted variant only. With ``tiling`` (decode keywords),
    each case twice: one shot, then as the tiling options plan it (tiled rows beside one-shot ones)."""
    if not targets or not sizes or not batches or not hoists:
        raise ConfigError("bench: expected at least one backend, size, batch and hoist variant")
    for b in batches:
        if b < 1:
            raise ConfigError(f"--batch {b}: expected a positive integer")
    cases = []
    for (h, w), batch, target in itertools.product(sizes, batches, targets):
        mine = hoists if target.can_unhoist else (True,)
        for hoist in dict.fromkeys(mine):
            cases.append(BenchCase(target, h, w, batch, hoist, steps))
            if tiling:
                cases.append(BenchCase(target, h, w, batch, hoist, steps, tuple(sorted(tiling.items()))))
    return cases
