"""The one comparison path (Polygraphy underneath) and the bounds table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pid_trt.config import Precision
from pid_trt.verify.bounds import BOUNDS, Bound, bound_for, governing
from pid_trt.verify.metrics import figures, psnr


def test_figures_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    cand = ref + 0.01 * torch.randn(ref.shape, generator=g)
    f = figures("image", cand, ref, atol=0.1)
    d = (cand.double() - ref.double()).abs()
    assert f.max_abs == pytest.approx(d.max().item(), rel=1e-12)
    assert f.mean_abs == pytest.approx(d.mean().item(), rel=1e-6)  # Polygraphy accumulates means in fp32
    assert f.l2 == pytest.approx(d.pow(2).sum().sqrt().item(), rel=1e-12)
    mse = d.pow(2).mean().item()
    assert f.psnr_db == pytest.approx(10 * math.log10(4 / mse), rel=1e-9)  # range 2, not max(ref)
    a, b = cand.double().flatten(), ref.double().flatten()
    assert f.cosine == pytest.approx((a @ b / (a.norm() * b.norm())).item(), rel=1e-9)
    assert f.snr_db == pytest.approx(10 * math.log10(b.pow(2).mean().item() / mse), rel=1e-9)
    assert f.within_tolerance is True and f.nonfinite == 0
    assert figures("image", cand, ref, atol=1e-4).within_tolerance is False
    assert figures("image", cand, ref).within_tolerance is None


def test_rtol_and_nonfinite_follow_polygraphy():
    ref = torch.tensor([1.0, 100.0])
    cand = torch.tensor([1.0, 100.5])
    assert figures("x", cand, ref, atol=0.1, rtol=0.01).within_tolerance  # 0.5 <= 0.01 * 100
    assert not figures("x", cand, ref, atol=0.1, rtol=0.0).within_tolerance
    bad = figures("x", torch.tensor([1.0, float("nan")]), ref, atol=1.0)
    assert bad.nonfinite == 1 and bad.within_tolerance is False
    assert psnr(ref, ref) == math.inf
    assert psnr(np.zeros(4), np.full(4, 0.02)) == pytest.approx(10 * math.log10(4 / 4e-4))
    with pytest.raises(ValueError, match="shape"):
        figures("x", torch.zeros(2), torch.zeros(3))


def test_parity_and_quantize_use_the_same_path():
    from pid_trt.verify.fp8_sensitivity import psnr as psnr_db
    from pid_trt.verify.parity import Tolerance, compare

    ref = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    cand = ref + 1e-3
    c = compare("image", cand, ref, Tolerance(atol=2e-3, rtol=0.0), image=True)
    assert c.passed and c.psnr_db == pytest.approx(psnr(cand, ref)) == pytest.approx(psnr_db(cand, ref))
    assert not compare("image", cand, ref, Tolerance(atol=5e-4, rtol=0.0)).passed


def test_bounds_are_the_tests_numbers():
    """The table and the constants the test suite holds the project to may not drift apart."""
    from tests.backends.test_ort_parity import FP16_MIN_PSNR_DB
    from tests.backends.test_trt_backend import VELOCITY_MIN_PSNR_DB
    from tests.compile.test_quantize import GOLDEN_PSNR_DB

    assert BOUNDS[Precision.FP16]["image"] == Bound(
        "psnr_db", FP16_MIN_PSNR_DB, BOUNDS[Precision.FP16]["image"].source
    )
    assert BOUNDS[Precision.FP16]["velocity"].limit == VELOCITY_MIN_PSNR_DB
    assert BOUNDS[Precision.FP8]["image"].limit == GOLDEN_PSNR_DB
    assert BOUNDS[Precision.FP32]["image"].limit == 1e-3  # tests/golden/README.md, ONNX Runtime fp32
    assert BOUNDS[Precision.BF16]["image"].limit == 40.0  # tests/model/test_numerics.py, bf16


def test_the_less_precise_side_sets_the_bound():
    assert governing(Precision.FP32, Precision.FP16) is Precision.FP16
    assert governing(Precision.FP8, Precision.FP16) is Precision.FP8
    assert bound_for(Precision.FP32, Precision.FP32, "image").figure == "max_abs"
    assert bound_for(Precision.FP32, Precision.BF16, "velocity") is None
    assert not Bound("psnr_db", 40.0, "").holds(math.nan)
    assert Bound("max_abs", 1e-3, "").holds(1e-3) and not Bound("max_abs", 1e-3, "").holds(2e-3)
