"""ONNX Runtime backend parity: every golden case fp32 against out/velocity and out/image,
one case end-to-end through ``pidtrt export`` + ``pidtrt decode --backend onnxruntime``,
fp16 graphs by image PSNR against the fp32 graph, and hoist on/off equivalence."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from pid_trt.backends.base import Conditioning
from pid_trt.backends.ort_backend import OrtBackend
from pid_trt.buckets import Bucket
from pid_trt.config import Precision
from pid_trt.sampling import TIMESCALE, sample
from pid_trt.verify.parity import Tolerance, compare, format_table, psnr
from tests.conftest import GOLDEN
from tests.export_helpers import golden_export, load_golden

# Every golden file exported and run on ONNX Runtime (66 s for the first alone on 2 cores): full suite
# only (marked one by one). The quick tier keeps the engine path through the CLI: export, decode on ORT.

#: Golden tolerance of the ONNX path in fp32 (ORT's fused Attention / reassociated matmuls).
FP32_TOL = Tolerance(atol=1e-3, rtol=0.0)
#: fp16 graph vs fp32 graph, image PSNR in dB. Measured 72.2 (v15_flux2_unpatchify) and
#: 69.3 dB (v15_flux_square) on ORT CPU; bound ~15 dB below the worst.
FP16_MIN_PSNR_DB = 55.0


@pytest.fixture(scope="session")
def export_root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "onnx-export"


def _backend(res, config, d, precision=Precision.FP32, hoist=True):
    b, _, h, w = d["in/x"].shape
    return OrtBackend(res.prepare, res.step, config, Bucket(h, w), b, precision, hoist=hoist)


def _cond(d):
    _, _, h, w = d["in/x"].shape
    return Conditioning(d["in/lq_latent"], d["in/y"], d["in/degrade_sigma"], h, w)


def _image(backend, d):
    return sample(backend.bind(_cond(d)), [d[f"sampler/noise{i}"] for i in range(4)])


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
@pytest.mark.slow
def test_fp32_matches_golden(path, export_root):
    res, config, d = golden_export(path, "fp32", export_root)
    backend = _backend(res, config, d)
    denoise = backend.bind(_cond(d))
    t = float(d["in/t"][0]) / TIMESCALE
    vel = compare("velocity", denoise(d["in/x"], t), d["out/velocity"], FP32_TOL)
    img = compare("image", _image(backend, d), d["out/image"], FP32_TOL, image=True)
    print("\n" + format_table([(path.stem, vel), (path.stem, img)]))
    assert vel.passed, f"{path.stem}: velocity max|d| {vel.max_abs:.3g} > {FP32_TOL.atol}"
    assert img.passed, f"{path.stem}: image max|d| {img.max_abs:.3g} > {FP32_TOL.atol}"


@pytest.mark.slow
def test_hoist_off_gives_the_same_image(export_root):
    res, config, d = golden_export(GOLDEN[0], "fp32", export_root)
    on = _image(_backend(res, config, d, hoist=True), d)
    off = _image(_backend(res, config, d, hoist=False), d)
    assert torch.equal(on, off)


@pytest.mark.slow
def test_bind_refuses_a_foreign_batch_or_size(export_root):
    from pid_trt.errors import ConfigError

    res, config, d = golden_export(GOLDEN[0], "fp32", export_root)
    backend = _backend(res, config, d)
    _, _, h, w = d["in/x"].shape
    with pytest.raises(ConfigError, match="batch"):
        backend.bind(
            Conditioning(
                d["in/lq_latent"].repeat(2, 1, 1, 1),
                d["in/y"].repeat(2, 1, 1),
                d["in/degrade_sigma"].repeat(2),
                h,
                w,
            )
        )
    with pytest.raises(ConfigError, match="export is for"):
        backend.bind(Conditioning(d["in/lq_latent"], d["in/y"], d["in/degrade_sigma"], h + 16, w))


@pytest.mark.parametrize("path", GOLDEN[:2], ids=[p.stem for p in GOLDEN[:2]])
@pytest.mark.slow
def test_fp16_graph_psnr_vs_fp32(path, export_root):
    res32, config, d = golden_export(path, "fp32", export_root)
    res16, _, _ = golden_export(path, "fp16", export_root)
    ref = _image(_backend(res32, config, d), d)
    img = _image(_backend(res16, config, d, Precision.FP16), d)
    assert torch.isfinite(img).all()
    db = psnr(img, ref)
    print(f"\n{path.stem}: fp16 graph image PSNR vs fp32 {db:.1f} dB")
    assert db >= FP16_MIN_PSNR_DB, f"{path.stem}: fp16 PSNR {db:.1f} dB < {FP16_MIN_PSNR_DB}"


def _pidtrt(*args, cwd):
    proc = subprocess.run(
        [sys.executable, "-m", "pid_trt.cli.main", *map(str, args)],
        cwd=cwd,
        check=False,
        capture_output=True,
        text=True,
    )
    return proc


def test_cli_export_then_decode_matches_golden(tmp_path):
    """The real CLI: convert the golden weights, `pidtrt export --net-config`, then
    `pidtrt decode --backend onnxruntime` with the golden noises."""
    from pid_trt.checkpoints import convert_checkpoint
    from pid_trt.io import write_latent_file, write_noise_file

    path = next(p for p in GOLDEN if p.stem == "v1_flux_square")
    config, model, d = load_golden(path)
    (tmp_path / "net.json").write_text(json.dumps(config.to_upstream()))
    save_file(
        {f"net.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "raw.safetensors")
    )
    convert_checkpoint(tmp_path / "raw.safetensors", tmp_path / "ckpt.safetensors", config)
    write_latent_file(tmp_path / "lat.safetensors", d["in/lq_latent"], d["in/y"], d["in/degrade_sigma"])
    write_noise_file(tmp_path / "noise.safetensors", [d[f"sampler/noise{i}"] for i in range(4)])
    _, _, h, w = d["in/x"].shape
    exp = _pidtrt("export", "--net-config", "net.json", "--checkpoint", "ckpt.safetensors", "--size", f"{w}x{h}",
                  "--export-dir", "exp", cwd=tmp_path)  # fmt: skip
    assert exp.returncode == 0, exp.stderr
    assert "step.onnx" in exp.stdout and "peak RSS" in exp.stdout
    dec = _pidtrt("decode", "lat.safetensors", "-o", "out.safetensors", "--net-config", "net.json",
                  "--checkpoint", "ckpt.safetensors", "--noise", "noise.safetensors", "--backend", "onnxruntime",
                  "--export-dir", "exp", cwd=tmp_path)  # fmt: skip
    assert dec.returncode == 0, dec.stderr
    assert "exporting" not in dec.stderr  # served by the export made above
    from safetensors.torch import load_file

    image = load_file(str(tmp_path / "out.safetensors"))["image"]
    err = (image - d["out/image"]).abs().max().item()
    assert err <= FP32_TOL.atol, f"CLI decode image max|d| {err:.3g}"
    wrong = _pidtrt("export", "--net-config", "net.json", "--checkpoint", "ckpt.safetensors", "--res", "64",
                    "--precision", "int8", "--export-dir", "exp", cwd=tmp_path)  # fmt: skip
    assert (
        wrong.returncode == 2 and "int8" in wrong.stderr and "fp8" in wrong.stderr
    )  # names what is accepted
