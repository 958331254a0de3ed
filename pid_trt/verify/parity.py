"""Output comparison in Polygraphy's conventions (``polygraphy run --atol --rtol``), computed by
Polygraphy itself through :func:`pid_trt.verify.metrics.figures` (the project's one comparison path).

An output passes when every element satisfies ``|a - b| <= atol`` or ``|a - b| <= rtol * |b|``
(b is the reference; Polygraphy's elementwise check) and neither side has NaN or Inf. Each
comparison also reports max / mean absolute error, max relative error and, for images in
[-1, 1], the PSNR in dB (peak-to-peak 2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from pid_trt.verify.metrics import IMAGE_RANGE, figures, psnr

__all__ = ["IMAGE_RANGE", "Comparison", "Tolerance", "compare", "compare_all", "format_table", "psnr"]


@dataclass(frozen=True)
class Tolerance:
    """Per-output tolerance: pass iff |a - b| <= atol or |a - b| <= rtol * |b|, everywhere."""

    atol: float = 1e-5
    rtol: float = 1e-5


@dataclass(frozen=True)
class Comparison:
    """One output of one run against its reference.

    max_abs / mean_abs: |a - b|; max_rel: |a - b| / |b|; psnr_db: for images (else None);
    nonfinite: count of NaN/Inf in the candidate; passed: within tolerance and finite.
    """

    name: str
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    max_rel: float
    psnr_db: float | None
    nonfinite: int
    tolerance: Tolerance
    passed: bool


def compare(
    name: str,
    candidate: torch.Tensor,
    reference: torch.Tensor,
    tolerance: Tolerance = Tolerance(),
    image: bool = False,
) -> Comparison:
    """Compare one output (any float dtype; computed in float64). Shapes must match."""
    f = figures(name, candidate, reference, atol=tolerance.atol, rtol=tolerance.rtol)
    return Comparison(
        name=name,
        shape=f.shape,
        max_abs=f.max_abs,
        mean_abs=f.mean_abs,
        max_rel=f.max_rel,
        psnr_db=f.psnr_db if image and f.nonfinite == 0 else None,
        nonfinite=f.nonfinite,
        tolerance=tolerance,
        passed=bool(f.within_tolerance) and f.nonfinite == 0,
    )


def compare_all(
    candidates: Mapping[str, torch.Tensor],
    references: Mapping[str, torch.Tensor],
    tolerances: Mapping[str, Tolerance] | None = None,
    images: Iterable[str] = (),
) -> list[Comparison]:
    """Compare every output the reference has (a missing candidate output raises KeyError)."""
    tolerances = tolerances or {}
    images = set(images)
    return [
        compare(name, candidates[name], ref, tolerances.get(name, Tolerance()), image=name in images)
        for name, ref in references.items()
    ]


def format_table(rows: Iterable[tuple[str, Comparison]]) -> str:
    """A fixed-width table of (case label, comparison) rows."""
    head = f"{'case':<28} {'output':<10} {'max|d|':>10} {'mean|d|':>10} {'PSNR dB':>8} {'atol':>8} {'ok':>4}"
    lines = [head, "-" * len(head)]
    for label, c in rows:
        p = "-" if c.psnr_db is None else ("inf" if math.isinf(c.psnr_db) else f"{c.psnr_db:.1f}")
        ok = "yes" if c.passed else ("NaN" if c.nonfinite else "NO")
        lines.append(
            f"{label[:28]:<28} {c.name[:10]:<10} {c.max_abs:>10.3g} {c.mean_abs:>10.3g} {p:>8} {c.tolerance.atol:>8.0e} {ok:>4}"
        )
    return "\n".join(lines)
