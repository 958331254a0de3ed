"""pid_latent / to_pid_frame / EarlyCapture / encode_image on tiny random diffusers pipelines.

The pipelines (tests/integrations/diffusers_helpers.py) have the real latent layouts
(channels, 1/8 VAE, packing) at toy widths and run from ``prompt_embeds``; everything is
built offline. Images are 64x96 (non-square, so a swapped height / width shows).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import diffusers  # noqa: F401 - the [diffusers] extra: a missing package fails here, never skips
import pytest
import torch

from pid_trt.errors import ConfigError, InputFileError
from pid_trt.integrations.diffusers import (
    EarlyCapture,
    add_noise,
    default_capture_step,
    encode_image,
    ldm_spec,
    pid_latent,
    pid_to_vae,
    to_pid_frame,
    vae_to_pid,
)
from tests.conftest import quick_first
from tests.integrations.diffusers_helpers import embeds, make_pipeline

H, W = 64, 96
STEPS = 4

# backbone -> (pipeline output shape, PiD latent shape) at 64x96 (n, m = 4, 6 tokens).
SHAPES = {
    "flux": ((1, 24, 64), (1, 16, 8, 12)),
    "flux2": ((1, 24, 128), (1, 128, 4, 6)),
    "flux2_klein": ((1, 32, 8, 12), (1, 128, 4, 6)),
    "qwenimage": ((1, 24, 64), (1, 16, 8, 12)),
    "sd3": ((1, 16, 8, 12), (1, 16, 8, 12)),
    "sdxl": ((1, 4, 8, 12), (1, 4, 8, 12)),
    "zimage": ((1, 16, 8, 12), (1, 16, 8, 12)),
}


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def denoiser(pipe):
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


@pytest.fixture(scope="module")
def pipes():
    return {}


def get(pipes, backbone):
    if backbone not in pipes:
        pipes[backbone] = make_pipeline(backbone)
    return pipes[backbone]


def run(pipe, backbone, seed=0, steps=STEPS, **kw):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return pipe(height=H, width=W, num_inference_steps=steps, generator=gen, **embeds(backbone), **kw)


# ------------------------------------------------------------------------- pid_latent
@pytest.mark.parametrize(
    "backbone", quick_first(["flux", "sdxl", "flux2", "qwenimage", "sd3", "zimage"], keep=2)
)
def test_pid_latent_decodes_like_the_pipeline(pipes, backbone):
    """pid_latent (unpack) + pid_to_vae (de-normalise) + the VAE decode reproduce the image the
    pipeline itself decodes (output_type="pt") from the same run: the layout and the
    normalisation both follow the pipeline's own code."""
    pipe = get(pipes, backbone)
    packed = run(pipe, backbone, output_type="latent").images
    want_in, want_out = SHAPES[backbone]
    assert tuple(packed.shape) == want_in
    latent = pid_latent(pipe, packed, backbone, H, W)
    assert tuple(latent.shape) == want_out and latent.dtype == torch.float32

    reference = run(pipe, backbone, output_type="pt").images
    with torch.no_grad():
        image = pipe.vae.decode(pid_to_vae(pipe.vae, latent, backbone), return_dict=False)[0]
    if image.dim() == 5:  # Qwen-Image's video VAE: first frame
        image = image[:, :, 0]
    image = (image / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(image, reference, atol=2e-5, rtol=0)


def test_pid_latent_flux_is_the_2x2_unpatchify():
    """Packed Flux token (i, j) holds channels (c, pi, pj) of latent cells (2i+pi, 2j+pj)."""
    packed = torch.randn(2, 4 * 6, 64)
    latent = pid_latent(SimpleNamespace(vae_scale_factor=8), packed, "flux", H, W)
    tokens = packed.view(2, 4, 6, 16, 2, 2)
    for i, j, c, pi, pj in [(0, 0, 0, 0, 0), (3, 5, 15, 1, 1), (1, 2, 7, 0, 1), (2, 4, 3, 1, 0)]:
        assert latent[1, c, 2 * i + pi, 2 * j + pj] == tokens[1, i, j, c, pi, pj]


def test_pid_latent_flux2_follows_the_position_ids():
    """Packed FLUX.2 token k is latent cell (k // m, k % m) (row-major position ids), 128 ch."""
    packed = torch.randn(1, 24, 128)
    latent = pid_latent(SimpleNamespace(vae_scale_factor=8), packed, "flux2", H, W)
    for k in (0, 5, 6, 23):
        torch.testing.assert_close(latent[0, :, k // 6, k % 6], packed[0, k], atol=0, rtol=0)


def test_raw_flux2_and_its_packed_twin_give_the_same_latent(pipes, recorder):
    """FLUX.2-klein returns the raw [B, 32, H/8, W/8] latent (de-normalised, unpatchified);
    its last loop latent is the packed, normalised twin. Both give one PiD latent."""
    pipe = get(pipes, "flux2_klein")
    raw = run(pipe, "flux2_klein", output_type="latent", callback_on_step_end=recorder).images
    assert tuple(raw.shape) == (1, 32, 8, 12) and tuple(recorder.latents[-1].shape) == (1, 24, 128)
    from_raw = pid_latent(pipe, raw, "flux2", H, W)
    from_packed = pid_latent(pipe, recorder.latents[-1], "flux2", H, W)
    torch.testing.assert_close(from_raw, from_packed, atol=1e-5, rtol=1e-5)
    # and the raw path is the BatchNorm normalisation of the 2x2 patchify, by hand
    bn = pipe.vae.bn
    p = raw.view(1, 32, 4, 2, 6, 2).permute(0, 1, 3, 5, 2, 4).reshape(1, 128, 4, 6)
    by_hand = (p - bn.running_mean.view(1, -1, 1, 1)) / (bn.running_var.view(1, -1, 1, 1) + bn.eps).sqrt()
    torch.testing.assert_close(from_raw, by_hand, atol=1e-6, rtol=1e-6)
    assert pid_latent(pipe, raw, "flux2-klein-4b", H, W).equal(from_raw)  # upstream's tag


def test_pid_latent_reads_only_the_scale_factor_and_bn():
    stub = SimpleNamespace(vae_scale_factor=8)
    assert pid_latent(stub, torch.randn(1, 24, 64), "qwenimage", H, W).shape == (1, 16, 8, 12)
    assert pid_latent(stub, torch.randn(1, 16, 1, 8, 12), "qwenimage", H, W).shape == (1, 16, 8, 12)
    same = torch.randn(1, 4, 8, 12)
    assert pid_latent(stub, same, "sdxl", H, W).equal(same)
    bn = torch.nn.BatchNorm2d(128, eps=1e-4, affine=False).eval()
    with_bn = SimpleNamespace(vae_scale_factor=8, vae=SimpleNamespace(bn=bn))
    assert pid_latent(with_bn, torch.randn(1, 32, 8, 12), "flux2", H, W).shape == (1, 128, 4, 6)


@pytest.mark.parametrize(
    "backbone, shape, error",
    [
        ("flux", (1, 23, 64), InputFileError),  # sequence of another size
        ("flux", (1, 24, 16), InputFileError),  # 4 channels packed, not 16
        ("flux", (1, 16, 6, 8), InputFileError),  # unpacked, wrong grid
        ("flux2", (1, 24, 64), InputFileError),
        ("flux2", (1, 32, 8, 12), ConfigError),  # raw, but the pipeline has no vae.bn
        ("qwenimage", (1, 16, 2, 8, 12), InputFileError),
        ("sdxl", (1, 16, 8, 12), InputFileError),
        ("sd3", (1, 16, 12, 8), InputFileError),  # height and width swapped
        ("dinov2", (1, 768, 4, 6), ConfigError),
        ("tiny", (1, 16, 8, 12), ConfigError),
    ],
)
def test_pid_latent_refuses_what_does_not_fit(backbone, shape, error):
    with pytest.raises(error) as info:
        pid_latent(SimpleNamespace(vae_scale_factor=8), torch.randn(*shape), backbone, H, W)
    message = str(info.value)
    assert "\n" not in message
    if error is InputFileError:
        assert str(list(shape)) in message and "expected" in message


# ------------------------------------------------------------------------- frame
def test_to_pid_frame():
    x = torch.randn(2, 4, 8, 8)
    for backbone in ("flux", "flux2", "sd3", "qwenimage", "zimage", "zimage_turbo"):
        out, sigma = to_pid_frame(x, 0.7, backbone)
        assert out is x and sigma == 0.7
    out, sigma = to_pid_frame(x, 14.6, "sdxl")
    d = math.sqrt(14.6**2 + 1)
    torch.testing.assert_close(out, x / d, atol=0, rtol=0)
    assert sigma == pytest.approx(14.6 / d) and isinstance(sigma, float)
    out, sigma = to_pid_frame(x, torch.tensor([0.0, 3.0]), "sdxl")
    torch.testing.assert_close(out[0], x[0], atol=0, rtol=0)
    torch.testing.assert_close(out[1], x[1] / math.sqrt(10), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sigma, torch.tensor([0.0, 3 / math.sqrt(10)]))
    out, sigma = to_pid_frame(x, 0.0, "sdxl")
    assert torch.equal(out, x) and sigma == 0.0


# ------------------------------------------------------------------------- capture
def test_capture_defaults():
    table = {
        "flux": (28, 24), "sd3": (28, 24), "sdxl": (30, 26), "flux2": (50, 46), "qwenimage": (50, 44),
        "zimage": (50, 46), "zimage_turbo": (9, 9), "flux2_klein": (4, 4),
    }  # fmt: skip
    for backbone, (steps, k) in table.items():
        spec = ldm_spec(backbone)
        assert (spec.steps, default_capture_step(spec, steps)) == (steps, k), backbone
    assert default_capture_step(ldm_spec("flux"), 7) == 6  # round(24 * 7 / 28)
    assert default_capture_step(ldm_spec("flux2"), 4) == 4  # klein-like runs keep their final latent
    assert default_capture_step(ldm_spec("zimage-turbo"), 9) == 9


@pytest.mark.parametrize("backbone", quick_first(["flux", "sdxl", "qwenimage"]))
def test_capture_at_k_is_the_pipelines_latent_at_k_and_stops_there(pipes, backbone, recorder):
    """EarlyCapture(K) keeps the loop's latent after step K (callback index K - 1), with
    sigma = scheduler.sigmas[K] (SDXL's Euler frame mapped to VP), and the pipeline makes
    K denoiser calls instead of STEPS + 1."""
    steps, k = STEPS + 1, 3
    pipe = get(pipes, backbone)
    full = run(pipe, backbone, steps=steps, output_type="latent", callback_on_step_end=recorder)
    sigmas = pipe.scheduler.sigmas.clone()
    assert len(recorder.latents) == steps

    calls = count_calls(denoiser(pipe))
    cap = EarlyCapture(backbone, k)
    out = run(pipe, backbone, steps=steps, output_type="latent", callback_on_step_end=cap)
    assert len(calls) == k and cap.step == k and cap.steps == steps
    assert cap.scheduler_sigma == pytest.approx(float(sigmas[k]))
    want, want_sigma = to_pid_frame(recorder.latents[k - 1], float(sigmas[k]), backbone)
    torch.testing.assert_close(cap.latent, want, atol=0, rtol=0)
    assert cap.sigma == pytest.approx(want_sigma)
    assert 0 < cap.sigma < 1 and torch.equal(out.images, recorder.latents[k - 1])  # the run ends at K
    if backbone == "sdxl":  # Euler (VE) sigma and latent, scaled to the VP frame
        assert cap.sigma < cap.scheduler_sigma and not torch.equal(cap.latent, recorder.latents[k - 1])
    assert not torch.equal(full.images, out.images)
    # the packed capture converts like a final output
    assert pid_latent(pipe, cap.latent, backbone, H, W).shape == SHAPES[backbone][1]


def test_capture_default_on_a_28_step_flux_run(pipes):
    pipe = get(pipes, "flux")
    calls = count_calls(pipe.transformer)
    cap = EarlyCapture("flux")
    run(pipe, "flux", steps=28, output_type="latent", callback_on_step_end=cap)
    assert (cap.step, cap.steps, len(calls)) == (24, 28, 24)
    assert cap.sigma == pytest.approx(float(pipe.scheduler.sigmas[24]))


def test_capture_final_step_and_bad_steps(pipes):
    pipe = get(pipes, "flux")
    calls = count_calls(pipe.transformer)
    cap = EarlyCapture("flux", STEPS)
    out = run(pipe, "flux", output_type="latent", callback_on_step_end=cap)
    assert len(calls) == STEPS and cap.sigma == 0.0 and torch.equal(cap.latent, out.images)
    with pytest.raises(ConfigError, match="capture step 9"):
        run(pipe, "flux", output_type="latent", callback_on_step_end=EarlyCapture("flux", 9))
    with pytest.raises(ConfigError):
        EarlyCapture("flux", 0)


# ------------------------------------------------------------------------- image -> latent
VAES = {
    "flux": "flux_vae", "sd3": "sd3_vae", "sdxl": "sdxl_vae", "zimage": "flux_vae", "flux2": "flux2_vae",
    "qwenimage": "qwen_vae",
}  # fmt: skip
RAW = {"flux": (16, 8, 12), "sd3": (16, 8, 12), "sdxl": (4, 8, 12), "zimage": (16, 8, 12),
       "flux2": (32, 8, 12), "qwenimage": (16, 1, 8, 12)}  # fmt: skip
PID = {"flux": (16, 8, 12), "sd3": (16, 8, 12), "sdxl": (4, 8, 12), "zimage": (16, 8, 12),
       "flux2": (128, 4, 6), "qwenimage": (16, 8, 12)}  # fmt: skip


@pytest.fixture(scope="module")
def vaes():
    from tests.integrations import diffusers_helpers

    return {b: getattr(diffusers_helpers, name)() for b, name in VAES.items()}


@pytest.mark.parametrize("backbone", list(VAES))
def test_normalisation_round_trip(vaes, backbone):
    vae = vaes[backbone]
    mu = torch.randn(2, *RAW[backbone], generator=torch.Generator().manual_seed(0))
    z = vae_to_pid(vae, mu, backbone)
    assert tuple(z.shape) == (2, *PID[backbone])
    back = pid_to_vae(vae, z, backbone)
    assert back.shape == mu.shape
    torch.testing.assert_close(back, mu, atol=1e-5, rtol=1e-5)
    formula = {
        "flux": lambda m: 0.3611 * (m - 0.1159),
        "sd3": lambda m: 1.5305 * (m - 0.0609),
        "sdxl": lambda m: 0.13025 * m,
        "zimage": lambda m: vae.config.scaling_factor * (m - vae.config.shift_factor),
    }
    if backbone in formula:
        torch.testing.assert_close(z, formula[backbone](mu), atol=1e-6, rtol=1e-6)
    if backbone == "qwenimage":
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1)
        torch.testing.assert_close(z, (mu.squeeze(2) - mean) / std, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backbone", quick_first(VAES))
def test_encode_image(vaes, backbone):
    """encode_image = the VAE posterior mean, normalised; its de-normalised latent is what the
    VAE decodes (the pipeline's decode path), so decode(pid_to_vae(z)) = decode(mean)."""
    vae = vaes[backbone]
    x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z, sigma = encode_image(vae, x, backbone)
    assert tuple(z.shape) == (1, *PID[backbone]) and sigma == 0.0 and z.dtype == torch.float32
    with torch.no_grad():
        mean = vae.encode(x.unsqueeze(2) if backbone == "qwenimage" else x).latent_dist.mean
        a = vae.decode(pid_to_vae(vae, z, backbone)).sample
        b = vae.decode(mean).sample
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_add_noise_forms():
    z = torch.randn(1, 16, 8, 12)
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(add_noise(z, 0.3, "flux", seed=4), 0.7 * z + 0.3 * eps)
    torch.testing.assert_close(add_noise(z, 0.6, "sdxl", seed=4), 0.8 * z + 0.6 * eps)
    assert add_noise(z, 0.0, "flux", seed=4) is z
    assert not torch.equal(add_noise(z, 0.3, "flux", seed=5), add_noise(z, 0.3, "flux", seed=4))
    with pytest.raises(ConfigError, match="degrade sigma 1.5"):
        add_noise(z, 1.5, "flux")


def test_encode_image_refuses(vaes):
    x = torch.zeros(1, 3, H, W)
    with pytest.raises(ConfigError, match="AutoencoderKLFlux2"):
        encode_image(vaes["flux"], x, "flux2")
    with pytest.raises(ConfigError, match="4-channel"):
        encode_image(vaes["sdxl"], x, "flux")
    with pytest.raises(ConfigError, match="out of scope"):
        encode_image(vaes["flux"], x, "siglip")
    with pytest.raises(InputFileError, match="multiples of 16"):
        encode_image(vaes["flux"], torch.zeros(1, 3, 60, 96), "flux")
