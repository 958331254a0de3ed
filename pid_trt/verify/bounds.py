"""The bound of every figure ``pidtrt verify`` checks, per precision: one table.

The numbers are the ones the test suite already holds the project to (each row names where);
``tests/verify/test_bounds.py`` fails when a test's constant and this table drift apart.
A pair is held to the bound of its less precise side (fp32 > fp16 > bf16 > fp8).

Figures without a bound (bf16 / fp8 per-step velocities) are reported, never failed: no test
has measured a number for them yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pid_trt.config import Precision

#: Most precise first.
PRECISION_ORDER: tuple[Precision, ...] = (Precision.FP32, Precision.FP16, Precision.BF16, Precision.FP8)


@dataclass(frozen=True)
class Bound:
    """``figure`` (``max_abs``: at most ``limit``; ``psnr_db``: at least ``limit``) and where the
    number comes from."""

    figure: str
    limit: float
    source: str

    def holds(self, value: float) -> bool:
        """True when ``value`` is inside the bound (NaN never is)."""
        if math.isnan(value):
            return False
        return value <= self.limit if self.figure == "max_abs" else value >= self.limit

    def describe(self) -> str:
        """e.g. ``max|d| <= 0.001`` or ``PSNR >= 55 dB``."""
        if self.figure == "max_abs":
            return f"max|d| <= {self.limit:g}"
        return f"PSNR >= {self.limit:g} dB"


_GOLDEN_README = "golden README: ONNX Runtime fp32 graph, max|d| <= 1e-3 on out/velocity and out/image"

#: precision -> {"image": Bound, "velocity": Bound | None}
BOUNDS: dict[Precision, dict[str, Bound | None]] = {
    Precision.FP32: {
        "image": Bound("max_abs", 1e-3, _GOLDEN_README),
        "velocity": Bound("max_abs", 1e-3, _GOLDEN_README),
    },
    Precision.FP16: {
        "image": Bound(
            "psnr_db",
            55.0,
            "tests/backends/test_ort_parity.py FP16_MIN_PSNR_DB (fp16 ONNX graph; measured 69-74 dB)",
        ),
        "velocity": Bound(
            "psnr_db",
            45.0,
            "tests/backends/test_trt_backend.py VELOCITY_MIN_PSNR_DB (fp16 per-step velocity)",
        ),
    },
    Precision.BF16: {
        "image": Bound(
            "psnr_db", 40.0, "tests/model/test_numerics.py bf16 bound (golden bf16 images: 50.6-54.0 dB)"
        ),
        "velocity": None,
    },
    Precision.FP8: {
        "image": Bound(
            "psnr_db", 31.0, "tests/compile/test_quantize.py GOLDEN_PSNR_DB (FP8 golden images: 33.4-37.6 dB)"
        ),
        "velocity": None,
    },
}

#: Step-graph layers (``pidtrt verify --layers``): a tensor diverges when its relative L2 error
#: ||a - b|| / ||b|| exceeds this. New numbers (no test had them): the tiny fp16 step graph on
#: ONNX Runtime CPU measured at most 1.2e-3 on every layer; bf16 / fp8 scale with their mantissa.
LAYER_REL_L2: dict[Precision, float] = {
    Precision.FP32: 1e-4,
    Precision.FP16: 1e-2,
    Precision.BF16: 5e-2,
    Precision.FP8: 0.25,
}


def governing(reference: Precision, candidate: Precision) -> Precision:
    """The less precise of the two: its bounds apply to the pair."""
    return max(Precision(reference), Precision(candidate), key=PRECISION_ORDER.index)


def bound_for(reference: Precision, candidate: Precision, output: str) -> Bound | None:
    """The bound of ``output`` (``image`` or ``velocity``) for a reference / candidate pair."""
    return BOUNDS[governing(reference, candidate)][output]
