"""FP8 post-training quantization (ModelOpt fake quant on CPU): calibration, exclusions, image PSNR.

PSNR bounds are measured with random weights (tiny preset, seeded; golden files' randomly
initialised official-network weights); trained weights give different numbers. The
measured value is written beside each bound.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch

import pytest
import torch

from pid_trt.compile.quantize import (
    DEFAULT_FP8_EXCLUDE,
    FP8_GROUPS,
    PREPARE_LAYERS,
    CalibrationSpec,
    DecodeInputs,
    collect_calibration,
    decode,
    random_conditioning,
)
from pid_trt.config import TINY
from pid_trt.errors import ConfigError
from pid_trt.model import PidNet, random_init
from pid_trt.verify.golden import load_golden
from pid_trt.verify.metrics import psnr as psnr_db
from tests.conftest import GOLDEN, quick_first, require

CALIB = CalibrationSpec(num_samples=2, height=64, width=64, seed=0)
#: Image PSNR floor (dB) of the tiny preset with the default exclusion (measured 36.1 dB;
#: everything quantized: 31.6 dB).
TINY_PSNR_DB = 33.0
#: Image PSNR floor (dB) of the golden cases with the default exclusion (measured 33.4-37.6 dB,
#: worst v15_flux_square; on the exported bf16 base 33.7-37.6 dB; everything quantized:
#: 29.2-32.2 dB).
GOLDEN_PSNR_DB = 31.0
#: Image PSNR floor (dB) of the tiny FP8 graphs run by ONNX Runtime (CPU) (measured 35.9 dB).
ORT_PSNR_DB = 33.0


def _mtq():
    return require("modelopt.torch.quantization")


@pytest.fixture(scope="module")
def tiny():
    return random_init(PidNet(TINY).eval(), seed=0)


@pytest.fixture(scope="module")
def samples(tiny):
    return collect_calibration(tiny, TINY, CALIB)


@pytest.fixture(scope="module")
def quantized(tiny, samples):
    _mtq()
    from pid_trt.compile.quantize import quantize_fp8

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
    # the exported graph's base: unquantized layers and activations in bf16 (measured 35.4 dB)
    psnr = psnr_db(decode(copy.deepcopy(quantized).to(torch.bfloat16), cond), ref)
    assert TINY_PSNR_DB <= psnr < 80.0, f"tiny FP8 (bf16 base) image PSNR {psnr:.2f} dB < {TINY_PSNR_DB}"


def test_excluded_and_prepare_layers_have_no_enabled_quantizers(quantized):
    from pid_trt.compile.quantize import enabled_quantizers

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
    from pid_trt.compile.quantize import enabled_quantizers, quantize_fp8

    q = quantize_fp8(copy.deepcopy(tiny), TINY, CALIB, fp8_attention=True, samples=samples[:4])
    names = enabled_quantizers(q)
    for stream in ("patch_blocks.0.attn", "pixel_blocks.1.attn"):
        for x in "qkv":
            assert f"{stream}.{x}_bmm_quantizer" in names
    cond = random_conditioning(TINY, CALIB, seed=1000)
    psnr = psnr_db(decode(q, cond), decode(tiny, cond))
    assert 30.0 <= psnr < 80.0, f"FP8-attention tiny PSNR {psnr:.2f} dB"  # measured 35.6 dB


def test_bad_arguments_raise_config_errors(tiny):
    _mtq()
    from pid_trt.compile.quantize import quantize_fp8

    with pytest.raises(ConfigError, match="one string"):
        quantize_fp8(copy.deepcopy(tiny), TINY, CALIB, exclude="final_layer.*")
    other = dataclasses.replace(TINY, patch_depth=2)
    with pytest.raises(ConfigError, match="model.config"):
        quantize_fp8(copy.deepcopy(tiny), other, CALIB)
    with pytest.raises(ConfigError, match="num_samples"):
        CalibrationSpec(num_samples=0)


def _golden(path):
    case = load_golden(path)
    return case.model, case.config, case.tensors


# one golden net in the quick tier; each further one calibrates and quantizes again: full suite only
@pytest.mark.parametrize("path", quick_first(GOLDEN), ids=[p.stem for p in GOLDEN])
def test_golden_fp8_image_psnr(path):
    _mtq()
    from pid_trt.compile.quantize import quantize_fp8

    model, config, d = _golden(path)
    b, _, h, w = d["in/x"].shape
    calib = CalibrationSpec(num_samples=1, height=h, width=w, batch=b)
    cond = DecodeInputs(
        d["in/y"],
        d["in/lq_latent"],
        d["in/degrade_sigma"],
        tuple(d[f"sampler/noise{i}"] for i in range(4)),
        h,
        w,
    )
    ref = decode(model, cond)
    assert (ref - d["out/image"]).abs().max().item() <= 1e-4  # the fp32 decode is the golden one
    q = quantize_fp8(model, config, calib)
    psnr = psnr_db(decode(q, cond), ref)
    assert GOLDEN_PSNR_DB <= psnr < 80.0, f"{path.stem}: FP8 image PSNR {psnr:.2f} dB"
    psnr = psnr_db(decode(q.to(torch.bfloat16), cond), ref)  # bf16 base, as exported: 33.7-37.6 dB
    assert GOLDEN_PSNR_DB <= psnr < 80.0, f"{path.stem}: FP8 (bf16 base) image PSNR {psnr:.2f} dB"


# --------------------------------------------------------------------------- FP8 ONNX
@pytest.fixture(scope="module")
def fp8_graphs(tiny, tmp_path_factory):
    _mtq()
    require("onnxruntime")
    from pid_trt.buckets import Bucket
    from pid_trt.compile.export import export_graphs

    out = tmp_path_factory.mktemp("fp8")
    export_graphs(tiny, Bucket(64, 64), "fp8", 1, out)  # the product path: bf16 base
    return out


@pytest.fixture(scope="module")
def fp8_fp32_base_graphs(tiny, tmp_path_factory):
    """fp32 prepare graph + FP8 step graph on an fp32 base: what ONNX Runtime's CPU provider
    runs (it has no bf16 MatMul)."""
    _mtq()
    require("onnxruntime")
    from pid_trt.buckets import Bucket
    from pid_trt.compile.export import STEP_FILE, export_graphs, graph_io_names
    from pid_trt.compile.export_fp8 import export_fp8_step

    out = tmp_path_factory.mktemp("fp8_fp32")
    export_graphs(tiny, Bucket(64, 64), "fp32", 1, out)
    gen = torch.Generator().manual_seed(0)
    cond = random_conditioning(TINY, CALIB, seed=7)
    with torch.no_grad():
        prepared = tiny.prepare(cond.caption, cond.latent, 64, 64)
    x = torch.randn(1, 3, 64, 64, generator=gen)
    args = (x, torch.full((1,), 866.0), prepared.y_emb, prepared.lq_feats, torch.full((1,), 0.1))
    (out / STEP_FILE).unlink()
    (out / (STEP_FILE + ".data")).unlink(missing_ok=True)
    export_fp8_step(tiny, args, graph_io_names(TINY)["step"], out / STEP_FILE, 23, CALIB, base=torch.float32)
    return out


@pytest.mark.slow  # the FP8 export calibrates 4 decodes and traces (~60 s shared)
def test_fp8_step_graph_has_float8_qdq(fp8_graphs):
    import onnx

    step = onnx.load(str(fp8_graphs / "step.onnx"), load_external_data=False)
    q = [n for n in step.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in step.graph.node if n.op_type == "DequantizeLinear"]
    assert q and len(q) == len(dq)
    fp8 = [i for i in step.graph.initializer if i.data_type == onnx.TensorProto.FLOAT8E4M3FN]
    assert fp8, "no float8e4m3fn zero point"
    # bf16 base: every weight matrix is bf16 (fp32 is left only for tables, the fp32 islands)
    weights = [i for i in step.graph.initializer if len(i.dims) == 2 and i.name.endswith(".weight")]
    assert weights and all(i.data_type == onnx.TensorProto.BFLOAT16 for i in weights), [
        i.name for i in weights if i.data_type != onnx.TensorProto.BFLOAT16
    ]
    assert any(n.op_type == "Attention" for n in step.graph.node)
    assert not any(n.domain == "trt" for n in step.graph.node)
    prep = onnx.load(str(fp8_graphs / "prepare.onnx"), load_external_data=False)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in prep.graph.node)


@pytest.mark.slow  # the FP8 export calibrates 4 decodes and traces (~60 s shared)
def test_fp8_graphs_run_in_onnxruntime(tiny, fp8_fp32_base_graphs):
    fp8_graphs = fp8_fp32_base_graphs
    import numpy as np
    import onnxruntime as ort

    from pid_trt.compile.export import graph_io_names
    from pid_trt.sampling import sample

    names = graph_io_names(TINY)["step"][0]
    prep = ort.InferenceSession(str(fp8_graphs / "prepare.onnx"), providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(str(fp8_graphs / "step.onnx"), providers=["CPUExecutionProvider"])
    cond = random_conditioning(TINY, CALIB, seed=1000)
    feats = prep.run(None, {"caption": cond.caption.numpy(), "latent": cond.latent.numpy()})
    sigma = cond.degrade_sigma.numpy()

    def denoise(x, t):
        t_in = np.full((x.shape[0],), t * 1000.0, np.float32)
        feeds = dict(zip(names, [x.numpy(), t_in, feats[0], feats[1], sigma, *feats[2:]], strict=True))
        return torch.from_numpy(step.run(None, feeds)[0])

    psnr = psnr_db(sample(denoise, list(cond.noise)), decode(tiny, cond))
    assert ORT_PSNR_DB <= psnr < 80.0, f"ORT FP8 image PSNR {psnr:.2f} dB"


@pytest.mark.slow  # the FP8 export calibrates 4 decodes and traces (~60 s shared)
def test_fp8_engine_builds_for_fp8_targets_only(fp8_graphs, tmp_path):
    from pid_trt.compile.build import BuildOptions, build_engine
    from pid_trt.config import Precision
    from pid_trt.trt_flavour import Flavour, normalise_targets

    require("tensorrt_rtx")
    assert normalise_targets(Flavour.TENSORRT_RTX, (), fp8=True) == ("8.9", "12.0")
    with pytest.raises(ConfigError, match="no FP8"):
        normalise_targets(Flavour.TENSORRT_RTX, ("8.6",), fp8=True)
    # bf16 base: every Attention node becomes a fused attention layer (no decomposition allowed)
    opts = BuildOptions(Precision.FP8)  # default targets: the FP8-capable ones
    report = build_engine(fp8_graphs / "step.onnx", tmp_path / "step.plan", opts, "tensorrt-rtx")
    assert report.compute_capabilities == ("8.9", "12.0")
    assert report.plan_bytes > 0 and (tmp_path / "step.plan").stat().st_size == report.plan_bytes
    import onnx

    graph = onnx.load(str(fp8_graphs / "step.onnx"), load_external_data=False).graph
    assert report.attention_layers == sum(n.op_type == "Attention" for n in graph.node) > 0
    opts = BuildOptions(Precision.FP8, compute_capabilities=("8.6",))
    with pytest.raises(ConfigError, match="no FP8"):  # SM86 has no FP8: refused before building
        build_engine(fp8_graphs / "step.onnx", tmp_path / "sm86.plan", opts, "tensorrt-rtx")
    assert not (tmp_path / "sm86.plan").exists()


@pytest.mark.parametrize(
    "backbone, height, width",
    [
        ("flux", 2048, 2048),
        ("flux", 2160, 3840),
        ("siglip", 4096, 4096),
        ("tiny", 64, 64),
        ("flux", 512, 384),
    ],
)
def test_calibration_size_is_capped_and_on_the_latent_grid(backbone, height, width):
    import math

    from pid_trt.compile.quantize import CALIBRATION_MAX_EDGE, calibration_for_bucket
    from pid_trt.config import get_preset

    config = get_preset(backbone).config
    spec = calibration_for_bucket(config, height, width, batch=2)
    cell = math.lcm(config.pixels_per_latent, config.patch_size)
    assert spec.batch == 2
    if max(height, width) <= CALIBRATION_MAX_EDGE:
        assert (spec.height, spec.width) == (height, width)  # small buckets calibrate as they are
    else:
        assert max(spec.height, spec.width) <= CALIBRATION_MAX_EDGE + cell // 2
        assert spec.height % cell == 0 and spec.width % cell == 0 and min(spec.height, spec.width) >= cell
        aspect, got = width / height, spec.width / spec.height
        assert abs(got - aspect) / aspect < 0.15  # the aspect ratio is kept (to the grid)
