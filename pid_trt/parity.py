"""Output comparison in Polygraphy's conventions (``polygraphy run --atol --rtol``).

An output passes when every element satisfies ``|a - b| <= atol + rtol * |b|`` (b is the
reference) and neither side has NaN or Inf. Each comparison also reports max / mean absolute
error, max relative error and, for images in [-1, 1], the PSNR in dB (peak-to-peak 2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

#: Peak-to-peak range of images in [-1, 1].
IMAGE_RANGE = 2.0


@dataclass(frozen=True)
class Tolerance:
    """Per-output tolerance: pass iff |a - b| <= atol + rtol * |b| everywhere."""

    atol: float = 1e-5
    rtol: float = 1e-5


@dataclass(frozen=True)
class Comparison:
    """One output of one run against its reference.

    max_abs / mean_abs: |a - b|; max_rel: |a - b| / (|b| + 1e-12); psnr_db: for images (else
    None); nonfinite: count of NaN/Inf in the candidate; passed: within tolerance and finite.
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


def psnr(candidate: torch.Tensor, reference: torch.Tensor, peak_to_peak: float = IMAGE_RANGE) -> float:
    """PSNR in dB of ``candidate`` vs ``reference``: 10 log10(range^2 / MSE); inf when equal."""
    mse = torch.mean((candidate.double() - reference.double()) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(peak_to_peak**2 / mse)


def compare(
    name: str,
    candidate: torch.Tensor,
    reference: torch.Tensor,
    tolerance: Tolerance = Tolerance(),
    image: bool = False,
) -> Comparison:
    """Compare one output (any float dtype; computed in float64). Shapes must match."""
    if tuple(candidate.shape) != tuple(reference.shape):
        raise ValueError(
            f"{name}: shape {tuple(candidate.shape)} differs from the reference {tuple(reference.shape)}"
        )
    a, b = candidate.detach().double().cpu(), reference.detach().double().cpu()
    nonfinite = int((~torch.isfinite(a)).sum().item())
    ref_bad = int((~torch.isfinite(b)).sum().item())
    diff = (a - b).abs()
    finite = torch.isfinite(diff)
    d = diff[finite] if finite.any() else torch.zeros(1, dtype=torch.float64)
    rel = (diff / (b.abs() + 1e-12))[finite]
    within = bool((diff <= tolerance.atol + tolerance.rtol * b.abs()).all().item())
    return Comparison(
        name=name,
        shape=tuple(a.shape),
        max_abs=float(d.max().item()),
        mean_abs=float(d.mean().item()),
        max_rel=float(rel.max().item()) if rel.numel() else 0.0,
        psnr_db=psnr(a, b) if image and nonfinite == 0 else None,
        nonfinite=nonfinite,
        tolerance=tolerance,
        passed=within and nonfinite == 0 and ref_bad == 0,
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
