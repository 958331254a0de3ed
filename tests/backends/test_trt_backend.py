"""The TensorRT backend: store refusals on any machine (the store is checked before CUDA), and
on a GPU, parity with the torch reference and a 4-step decode with no host sync."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.engine_helpers import built_store, pidtrt

# The store fixture builds a TensorRT-RTX engine pair on the CPU (~2 min on 2 cores): full suite only.
pytestmark = [pytest.mark.requires("tensorrt_rtx"), pytest.mark.slow]


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    s = built_store(tmp_path_factory.getbasetemp() / "trt-store")
    assert all(r[0] == 0 for r in s["results"].values()), s["results"]
    return s


@pytest.fixture(scope="session")
def latents(tmp_path_factory):
    d = tmp_path_factory.mktemp("latents")
    for size in ("64x64", "128x128"):
        res = pidtrt("sample-latent", "-o", str(d / f"{size}.safetensors"), "--size", size)
        assert res.returncode == 0, res.stderr
    return d


def _decode(latent: Path, engines: Path, out: Path, dtype: str = "fp16", *extra: str):
    return pidtrt("decode", str(latent), "-o", str(out), "--backbone", "tiny", "--random-weights",
                  "--backend", "tensorrt", "--dtype", dtype, "--engine-dir", str(engines), *extra)  # fmt: skip


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_other_tensorrt_version_is_refused(store, latents, tmp_path):
    engines = shutil.copytree(store["root"] / "engines", tmp_path / "engines")
    for p in engines.glob("*.manifest.json"):
        m = json.loads(p.read_text())
        if m["key"]["precision"] == "fp16" and m["build"]["graph"] == "step":
            m["key"]["trt_version"] = "1.6.0.0"
            p.write_text(json.dumps(m))
    res = _decode(latents / "64x64.safetensors", engines, tmp_path / "o.png")
    assert res.returncode == 2, res.stderr
    (err,) = _errors(res.stderr)
    assert res.stderr.strip().endswith(err)
    assert "stale" in err and "trt_version" in err and "1.6.0.0" in err and "pidtrt build" in err
    assert not (tmp_path / "o.png").exists()


def test_missing_bucket_names_the_build_command(store, latents, tmp_path):
    res = _decode(latents / "128x128.safetensors", store["root"] / "engines", tmp_path / "o.png")
    assert res.returncode == 2, res.stderr
    (err,) = _errors(res.stderr)
    assert "pidtrt build --backbone tiny --size 128x128 --precision fp16 --random-weights" in err
    assert "64x64 batch 1 fp16" in err and "64x64 batch 1 bf16" in err  # the buckets that do have engines


def test_store_is_checked_before_cuda(store, monkeypatch):
    """With sound engines the look-up passes and only then is CUDA required (CUDA hidden from
    torch, so the refusal is checked on GPU machines too)."""
    from pid_trt.backends.factory import BackendRequest
    from pid_trt.backends.trt_backend import TrtBackend
    from pid_trt.errors import BackendUnavailableError
    from pid_trt.netspec import resolve_net
    from pid_trt.options import RuntimeOptions

    spec = resolve_net("tiny", None, None, None, True)
    runtime = RuntimeOptions("tensorrt", "bf16", "cuda", store["root"] / "engines").resolve()
    req = BackendRequest(spec, runtime, 64, 64, 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="needs an NVIDIA GPU"):
        TrtBackend.from_request(req)


# ----------------------------------------------------------------------------- GPU

#: Per-step velocity PSNR (dB, peak-to-peak 2 as for images) of the fp16 engine against the
#: fp32 torch reference fed the same inputs. Bound from the fp16 ONNX graph's measured image
#: PSNR of 72 dB vs fp32 (tests/backends/test_ort_parity.py), with margin for TensorRT's kernels.
VELOCITY_MIN_PSNR_DB = 45.0
#: Final 4-step image PSNR (dB) of the fp16 engine decode against the torch fp32 decode.
IMAGE_MIN_PSNR_DB = 40.0


def _gpu_backend(store, cuda_graph: bool = False):
    from pid_trt.backends.factory import BackendRequest
    from pid_trt.backends.trt_backend import TrtBackend
    from pid_trt.errors import BackendUnavailableError
    from pid_trt.netspec import resolve_net
    from pid_trt.options import RuntimeOptions

    spec = resolve_net("tiny", None, None, None, True)
    runtime = RuntimeOptions("tensorrt", "fp16", "cuda", store["root"] / "engines", cuda_graph=cuda_graph)
    req = BackendRequest(spec, runtime.resolve(), 64, 64, 1)
    try:
        return spec, TrtBackend.from_request(req)
    except BackendUnavailableError as exc:
        if "Hopper" in str(exc):  # TensorRT-RTX engines do not run on H100/H200: refused clearly
            pytest.skip(str(exc))
        raise


def _conditioning(spec, seed: int = 0):
    from pid_trt.backends.base import Conditioning

    c = spec.config
    g = torch.Generator().manual_seed(seed)
    lh, lw = c.latent_size(64, 64)
    latent = torch.randn(1, c.lq_latent_channels, lh, lw, generator=g)
    caption = torch.randn(1, c.txt_max_length, c.txt_embed_dim, generator=g)
    return Conditioning(latent, caption, torch.tensor([0.1]), 64, 64)


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_trt_matches_torch_per_step_and_image(store, cuda_graph):
    from pid_trt.backends.torch_backend import TorchBackend
    from pid_trt.netspec import build_model
    from pid_trt.sampling import draw_noise, sample, timesteps
    from pid_trt.verify.parity import psnr

    spec, trt = _gpu_backend(store, cuda_graph)
    ref = TorchBackend(build_model(spec), torch.device("cuda"), torch.float32)
    cond = _conditioning(spec)
    d_trt, d_ref = trt.bind(cond), ref.bind(cond)
    noise = draw_noise((1, 3, 64, 64), 4, seed=1, device="cuda")
    x = noise[0]
    for i, t in enumerate(timesteps(4)[:-1]):
        v, v_ref = d_trt(x, t), d_ref(x, t)
        db = psnr(v.cpu(), v_ref.cpu())
        assert db >= VELOCITY_MIN_PSNR_DB, f"step {i} (t={t}): velocity PSNR {db:.1f} dB"
        x = (1 - timesteps(4)[i + 1]) * (x - t * v_ref) + timesteps(4)[i + 1] * noise[min(i + 1, 3)]
    img, img_ref = sample(d_trt, noise, 4), sample(d_ref, noise, 4)
    db = psnr(img.cpu(), img_ref.cpu())
    assert db >= IMAGE_MIN_PSNR_DB, f"image PSNR {db:.1f} dB"
    assert trt.memory.engines > 0 and trt.memory.buffers > 0
    trt.close()


@pytest.mark.gpu
def test_four_step_decode_has_no_host_sync(store):
    from pid_trt.sampling import draw_noise, sample

    spec, trt = _gpu_backend(store)
    denoise = trt.bind(_conditioning(spec))
    noise = draw_noise((1, 3, 64, 64), 4, seed=2, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside the decode raises
    try:
        img = sample(denoise, noise, 4)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(img).all()
    trt.close()
