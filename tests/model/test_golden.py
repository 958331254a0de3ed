"""Golden parity of the torch reference against the official network's vectors (tests/golden).

Tolerance (golden/README): max |delta| <= 1e-4 in float32 on CPU, for one network call
(out/velocity) and for the released 4-step sampler with the stored noises (out/image).
"""

from __future__ import annotations

import pytest
import torch

from pid_trt.sampling import TIMESCALE, sample
from pid_trt.verify.golden import load_golden
from tests.conftest import GOLDEN

TOL = 1e-4


def _load(path):
    case = load_golden(path)
    return case.model, case.tensors


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_velocity_matches_golden(path):
    model, d = _load(path)
    with torch.no_grad():
        v = model(d["in/x"], d["in/t"], d["in/y"], d["in/lq_latent"], d["in/degrade_sigma"])
    assert v.dtype == torch.float32 and v.shape == d["out/velocity"].shape
    err = (v - d["out/velocity"]).abs().max().item()
    assert err <= TOL, f"{path.stem}: velocity max|delta| {err:.3g} > {TOL}"


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_sampler_matches_golden(path):
    model, d = _load(path)
    batch = d["in/x"].shape[0]

    def denoiser(x, t):
        return model(
            x, torch.full((batch,), t * TIMESCALE), d["in/y"], d["in/lq_latent"], d["in/degrade_sigma"]
        )

    with torch.no_grad():
        image = sample(denoiser, [d[f"sampler/noise{i}"] for i in range(4)])
    err = (image - d["out/image"]).abs().max().item()
    assert err <= TOL, f"{path.stem}: image max|delta| {err:.3g} > {TOL}"


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_prepare_step_equals_forward_on_golden(path):
    model, d = _load(path)
    x = d["in/x"]
    with torch.no_grad():
        full = model(x, d["in/t"], d["in/y"], d["in/lq_latent"], d["in/degrade_sigma"])
        prep = model.prepare(d["in/y"], d["in/lq_latent"], x.shape[2], x.shape[3])
        split = model.step(x, d["in/t"], prep.y_emb, prep.lq_feats, d["in/degrade_sigma"], prep.pit_feat)
    assert torch.equal(full, split)
