"""Figures of one output against its reference: the project's one comparison path.

Computed by Polygraphy's comparison functions (``polygraphy.comparator``), on float64 copies:

- ``SimpleCompareFunc`` (``polygraphy run --atol --rtol``): max / mean absolute difference
  (Polygraphy accumulates the mean in float32), max relative difference, and the elementwise verdict: an element passes when
  ``|a - b| <= atol`` or ``|a - b| <= rtol * |b|`` (b the reference), NaN / Inf never pass;
- ``L2CompareFunc``: the L2 norm of the difference;
- ``CosineSimilarityCompareFunc``: cosine similarity;
- ``SnrCompareFunc``: SNR in dB, the reference as the signal.

Computed here, because Polygraphy lacks it: the **PSNR at a fixed peak-to-peak range** (2 for
images in [-1, 1]). Polygraphy's ``PsnrCompareFunc`` takes the reference's maximum as the
peak (<= 1 for such images), which would move every figure by >= 6 dB from the bounds the
tests use; so PSNR = 10 log10(range^2 / MSE) with MSE = L2^2 / N from Polygraphy's L2. Also
counted here: the non-finite values of the candidate (one ``isfinite``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pid_trt.errors import BackendUnavailableError

#: Peak-to-peak range of images in [-1, 1] (and the range velocity PSNRs are quoted at).
IMAGE_RANGE = 2.0
_NAME = "out"


def polygraphy_compare() -> Any:
    """``polygraphy.comparator.compare`` (raises BackendUnavailableError naming the install)."""
    try:
        from polygraphy.comparator import compare
    except ImportError as exc:
        raise BackendUnavailableError(
            f"Polygraphy is not installed ({exc}): pip install polygraphy"
        ) from None
    return compare


def quiet() -> Any:
    """A context manager silencing Polygraphy's logger (it logs every comparison at INFO)."""
    from polygraphy.logger import G_LOGGER

    return G_LOGGER.verbosity(G_LOGGER.CRITICAL)


def _f64(x: Any) -> np.ndarray:
    """A float64 numpy copy of a torch tensor or array (any float dtype, any device)."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _pair(candidate: np.ndarray, reference: np.ndarray) -> tuple[Any, Any]:
    from polygraphy.comparator import IterationResult

    return (
        IterationResult({_NAME: candidate}, runner_name="candidate"),
        IterationResult({_NAME: reference}, runner_name="reference"),
    )


@dataclass(frozen=True)
class Figures:
    """One output against its reference. ``psnr_db`` at ``peak_to_peak``; ``snr_db`` with the
    reference as signal; ``nonfinite``: NaN / Inf count of the candidate; ``within_tolerance``:
    Polygraphy's elementwise atol / rtol verdict (None when no atol was given)."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    max_rel: float
    psnr_db: float
    snr_db: float
    l2: float
    cosine: float
    nonfinite: int
    within_tolerance: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (inf / NaN as strings, since JSON has neither)."""
        out = asdict(self)
        out["shape"] = list(self.shape)
        return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def _psnr_from_l2(l2: float, count: int, peak_to_peak: float) -> float:
    mse = l2 * l2 / max(count, 1)
    if math.isnan(mse):
        return math.nan
    return math.inf if mse == 0 else 10.0 * math.log10(peak_to_peak**2 / mse)


def psnr(candidate: Any, reference: Any, peak_to_peak: float = IMAGE_RANGE) -> float:
    """PSNR in dB of ``candidate`` vs ``reference`` at a fixed ``peak_to_peak`` range (inf when
    equal), from Polygraphy's L2 norm of the difference."""
    cmp = polygraphy_compare()
    a, b = _f64(candidate), _f64(reference)
    if a.shape != b.shape:
        raise ValueError(f"PSNR: shape {a.shape} differs from the reference {b.shape}")
    with quiet():
        l2 = cmp.L2CompareFunc(l2_threshold=math.inf)(*_pair(a, b))[_NAME].l2_norm
    return _psnr_from_l2(l2, a.size, peak_to_peak)


def figures(
    name: str,
    candidate: Any,
    reference: Any,
    atol: float | None = None,
    rtol: float = 0.0,
    peak_to_peak: float = IMAGE_RANGE,
) -> Figures:
    """Every figure of ``candidate`` against ``reference`` (same shape; torch or numpy)."""
    cmp = polygraphy_compare()
    a, b = _f64(candidate), _f64(reference)
    if a.shape != b.shape:
        raise ValueError(f"{name}: shape {a.shape} differs from the reference {b.shape}")
    cand, ref = _pair(a, b)
    with quiet():
        simple = cmp.SimpleCompareFunc(
            atol=math.inf if atol is None else atol, rtol=rtol, check_error_stat="elemwise"
        )(cand, ref)[_NAME]
        l2 = cmp.L2CompareFunc(l2_threshold=math.inf)(cand, ref)[_NAME].l2_norm
        cosine = cmp.CosineSimilarityCompareFunc(cosine_similarity_threshold=-1.0)(cand, ref)[_NAME]
        snr = cmp.SnrCompareFunc(snr_threshold=-math.inf)(ref, cand)[_NAME].snr  # signal: the reference
    return Figures(
        name=name,
        shape=tuple(a.shape),
        max_abs=float(simple.max_absdiff),
        mean_abs=float(simple.mean_absdiff),
        max_rel=float(simple.max_reldiff),
        psnr_db=_psnr_from_l2(float(l2), a.size, peak_to_peak),
        snr_db=float(snr),
        l2=float(l2),
        cosine=float(cosine.cosine_similarity),
        nonfinite=int(a.size - np.isfinite(a).sum()),
        within_tolerance=None if atol is None else bool(simple),
    )


def format_db(value: float) -> str:
    """A dB figure for tables: ``inf`` for identical outputs, one decimal otherwise."""
    if math.isnan(value):
        return "NaN"
    return "inf" if math.isinf(value) else f"{value:.1f}"
