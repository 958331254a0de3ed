"""What to benchmark: runtimes (a backend at a precision on a device), sizes, batches, hoist variants."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pid_trt.backends.registry import BackendSpec
from pid_trt.errors import ConfigError
from pid_trt.options import Runtime, RuntimeOptions
from pid_trt.tiling.options import TileOptions


def bench_runtimes(backends: Sequence[str], template: RuntimeOptions) -> list[Runtime]:
    """One :class:`Runtime` per ``--backend`` (``NAME[:PRECISION][@DEVICE]``, e.g. ``tensorrt:fp8``),
    the other settings from ``template`` (precision, device, stores, hoist, CUDA graph), in order,
    without repeats. ``template.precision`` is the default of the backends written without one;
    a device a backend cannot run on moves to the backend's own (:attr:`Runtime.moved`: the run
    says so)."""
    out = []
    for text in backends:
        written = BackendSpec.parse(text).precision is not None
        options = dataclasses.replace(
            template, backend=text, precision=None if written else template.precision
        )
        out.append(options.resolve(fallback_device=True))
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class BenchCase:
    """One measured configuration. runtime: the backend, precision, device, stores and hoisting;
    height / width: output pixels; batch: images per decode; tiling: the tiling options, the
    decode running as their plan says (:meth:`pid_trt.Decoder.plan`); None: one shot at any size."""

    runtime: Runtime
    height: int
    width: int
    batch: int
    steps: int = 4
    tiling: TileOptions | None = None

    @property
    def hoist(self) -> bool:
        return self.runtime.hoist

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["runtime"] = self.runtime.to_dict()
        d["tiling"] = None if self.tiling is None else self.tiling.record()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchCase:
        tiling = TileOptions.create(**d["tiling"]) if d.get("tiling") else None
        return cls(
            Runtime.from_dict(d["runtime"]), int(d["height"]), int(d["width"]), int(d["batch"]), int(d["steps"]),
            tiling,
        )  # fmt: skip


def expand_cases(
    runtimes: list[Runtime],
    sizes: list[tuple[int, int]],
    batches: list[int],
    hoists: tuple[bool, ...],
    steps: int = 4,
    tiling: TileOptions | None = None,
) -> list[BenchCase]:
    """Every runtime x size x batch x hoist, in that nesting order (size outermost); a backend
    that cannot run un-hoisted gets its hoisted variant only. With ``tiling``,
    each case twice: one shot, then as the tiling options plan it (tiled rows beside one-shot ones)."""
    if not runtimes or not sizes or not batches or not hoists:
        raise ConfigError("bench: expected at least one backend, size, batch and hoist variant")
    for b in batches:
        if b < 1:
            raise ConfigError(f"--batch {b}: expected a positive integer")
    cases = []
    for (h, w), batch, runtime in itertools.product(sizes, batches, runtimes):
        mine = hoists if runtime.backend.can_unhoist else (True,)
        for hoist in dict.fromkeys(mine):
            r = dataclasses.replace(runtime, hoist=hoist)
            cases.append(BenchCase(r, h, w, batch, steps))
            if tiling:
                cases.append(BenchCase(r, h, w, batch, steps, tiling))
    return cases
