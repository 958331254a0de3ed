"""FP8 post-training quantization (ModelOpt fake quant on CPU): calibration, exclusions, image PSNR.

PSNR bounds are measured with random weights (tiny preset, seeded; golden files' randomly
initialised official-network weights); trained weights give different numbers. The
measured value is written beside each bound.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pid_trt.config import TINY, DecoderConfig
from pid_trt.errors import ConfigError
from pid_trt.model import PidDecoder, random_init
from pid_trt.quantize import (
    DEFAULT_FP8_EXCLUDE,
    FP8_GROUPS,
    PREPARE_LAYERS,
    CalibrationSpec,
    Conditioning,
    collect_calibration,
    decode,
    psnr_db,
    random_conditioning,
)
from tests.conftest import GOLDEN, needs_golden

CALIB = CalibrationSpec(num_samples=2, height=64, width=64, seed=0)
#: Image PSNR floor (dB) of the tiny preset with the default exclusion (measured 3x.x dB).
TINY_PSNR_DB = 30.0
#: Image PSNR floor (dB) of the golden cases with the default exclusion (worst measured 3x.x dB).
GOLDEN_PSNR_DB = 30.0


def _mtq():
    return pytest.importorskip("modelopt.torch.quantization", reason="nvidia-modelopt (the fp8 extra) not installed")


@pytest.fixture(scope="module")
def tiny():
    return random_init(PidDecoder(TINY).eval(), seed=0)


@pytest.fixture(scope="module")
def samples(tiny):
    return collect_calibration(tiny, TINY, CALIB)


@pytest.fixture(scope="module")
def quantized(tiny, samples):
    _mtq()
    from pid_trt.quantize import quantize_fp8

    return quantize_fp8(copy.deepcopy(tiny), TINY, CALIB, samples=samples)


def test_calibration_follows_the_four_sampler_timesteps(samples):
    ts = [s.t.tolist() for s in samples]
    assert len(samples) == CALIB.num_samples * 4
    # decode order: per sample, the 4 released timesteps (x1000), distinct and decreasing
    for i in range(CALIB.num_samples):
        chunk = [t[0] for t in ts[4 * i : 4 * i + 4]]
        assert chunk == pytest.approx([999.0, 866.0, 634.0, 342.0])
    assert len({t[0] for t in ts}) == 4
    # x_t moves along the trajectory: the step inputs of one decode differ
    assert not torch.equal(samples[0].x, samples[1].x)
    # distinct seeds give distinct conditioning
    assert not torch.equal(samples[0].y_emb, samples[4].y_emb)


def test_psnr_db():
    a = torch.zeros(1, 3, 4, 4)
    assert psnr_db(a, a) == float("inf")
    assert psnr_db(a + 0.02, a) == pytest.approx(10 * torch.log10(torch.tensor(4 / 4e-4)).item())


def test_quantized_tiny_image_psnr(tiny, quantized):
    cond = random_conditioning(TINY, CALIB, seed=1000)  # not a calibration seed
    ref = decode(tiny, cond)
    out = decode(quantized, cond)
    psnr = psnr_db(out, ref)
    assert psnr < 80.0, "quantization changed nothing: quantizers are not active"
    assert psnr >= TINY_PSNR_DB, f"tiny FP8 image PSNR {psnr:.2f} dB < {TINY_PSNR_DB}"


def test_excluded_and_prepare_layers_have_no_enabled_quantizers(quantized):
    from pid_trt.quantize import enabled_quantizers

    enabled = enabled_quantizers(quantized)
    assert enabled, "no quantizer enabled"
    for name in enabled:
        for pattern in (*DEFAULT_FP8_EXCLUDE, *PREPARE_LAYERS):
            assert not fnmatch.fnmatch(name, pattern), f"{name} is enabled but excluded by {pattern}"
    # every non-excluded step-graph group is really quantized (weights and inputs)
    for group, patterns in FP8_GROUPS.items():
        if set(patterns) <= set(DEFAULT_FP8_EXCLUDE):
            continue
        hits = [n for n in enabled if any(fnmatch.fnmatch(n, p) for p in patterns)]
        assert any(n.endswith("weight_quantizer") for n in hits), group
        assert any(n.endswith("input_quantizer") for n in hits), group
    # the excluded modules were converted but carry disabled quantizers
    from modelopt.torch.quantization.nn import TensorQuantizer

    off = [n for n, m in quantized.named_modules() if isinstance(m, TensorQuantizer) and not m.is_enabled]
    assert any(n.startswith("t_embedder.") and n.endswith("weight_quantizer") for n in off)
    assert any(n.startswith("lq_proj.output_heads.") for n in off)


def test_fp8_attention_quantizes_sdpa_inputs(tiny, samples):
    _mtq()
    from pid_trt.quantize import enabled_quantizers, quantize_fp8

    q = quantize_fp8(copy.deepcopy(tiny), TINY, CALIB, fp8_attention=True, samples=samples[:4])
    names = enabled_quantizers(q)
    for stream in ("patch_blocks.0.attn", "pixel_blocks.1.attn"):
        for x in "qkv":
            assert f"{stream}.{x}_bmm_quantizer" in names
    cond = random_conditioning(TINY, CALIB, seed=1000)
    psnr = psnr_db(decode(q, cond), decode(tiny, cond))
    assert 20.0 <= psnr < 80.0, f"FP8-attention tiny PSNR {psnr:.2f} dB"  # measured 3x.x dB


def test_bad_arguments_raise_config_errors(tiny):
    _mtq()
    from pid_trt.quantize import quantize_fp8

    with pytest.raises(ConfigError, match="one string"):
        quantize_fp8(copy.deepcopy(tiny), TINY, CALIB, exclude="final_layer.*")
    other = dataclasses.replace(TINY, patch_depth=2)
    with pytest.raises(ConfigError, match="model.config"):
        quantize_fp8(copy.deepcopy(tiny), other, CALIB)
    with pytest.raises(ConfigError, match="num_samples"):
        CalibrationSpec(num_samples=0)


def _golden(path):
    meta = safe_open(str(path), "pt").metadata()
    d = load_file(str(path))
    config = DecoderConfig.from_upstream(json.loads(meta["upstream_config"]))
    model = PidDecoder(config).eval()
    model.load_state_dict({k[len("weights/") :]: v for k, v in d.items() if k.startswith("weights/")})
    return model, config, d


@needs_golden
@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_fp8_image_psnr(path):
    _mtq()
    from pid_trt.quantize import quantize_fp8

    model, config, d = _golden(path)
    b, _, h, w = d["in/x"].shape
    calib = CalibrationSpec(num_samples=1, height=h, width=w, batch=b)
    cond = Conditioning(
        d["in/y"], d["in/lq_latent"], d["in/degrade_sigma"], tuple(d[f"sampler/noise{i}"] for i in range(4)), h, w
    )
    ref = decode(model, cond)
    assert (ref - d["out/image"]).abs().max().item() <= 1e-4  # the fp32 decode is the golden one
    q = quantize_fp8(model, config, calib)
    psnr = psnr_db(decode(q, cond), ref)
    assert GOLDEN_PSNR_DB <= psnr < 80.0, f"{path.stem}: FP8 image PSNR {psnr:.2f} dB"
