"""The dinov2 (RAE) and siglip (Scale-RAE) image encoders against upstream's code path.

Tiny random DINOv2-with-registers and SigLIP models are built offline at the released widths
(768 / 1152 channels, patch 14, one layer) so every shape is the real one. The reference
below is written from upstream's ``tokenizers/dinov2_vae.py`` and ``tokenizers/scale_rae_vae.py``
step by step (AutoModel, the final norm's affine removed as upstream removes it, the image
processor's mean / std, ``torch.load`` of the statistics), in float32. The final norms, the
processors' mean / std and the statistics are non-trivial, so each step shows in the output.
"""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from pid_trt.cli.main import app
from pid_trt.config import get_preset
from pid_trt.errors import ConfigError, InputFileError
from pid_trt.integrations.rae_encoders import encode_image_rae, load_rae_encoder, read_rae_stats
from pid_trt.io import read_latent_file

TOL = 1e-5  # max |Δ| against the reference (float32, same kernels)
DINO_MEAN, DINO_STD = [0.47, 0.45, 0.41], [0.23, 0.22, 0.24]  # not ImageNet's: shows they are read
SIG_MEAN, SIG_STD = [0.48, 0.5, 0.52], [0.5, 0.45, 0.55]


def _randomise_norm(norm: torch.nn.LayerNorm, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.weight.shape, generator=gen) + 0.5)
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=gen))


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory) -> Path:
    from transformers import BitImageProcessor, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    root = tmp_path_factory.mktemp("dinov2")
    cfg = Dinov2WithRegistersConfig(
        hidden_size=768, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        patch_size=14, image_size=518, num_register_tokens=4,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Dinov2WithRegistersModel(cfg).eval()
    _randomise_norm(model.layernorm, 1)
    with torch.no_grad():
        model.embeddings.register_tokens.normal_()
    model.save_pretrained(root)
    BitImageProcessor(image_mean=DINO_MEAN, image_std=DINO_STD).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def sig_dir(tmp_path_factory) -> Path:
    """A full SigLIP model folder (text + vision), as google/siglip2-so400m-patch14-224 ships
    (without the attention-pooling head: it only makes pooler_output, and is slow on the CPU)."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    root = tmp_path_factory.mktemp("siglip")
    cfg = SiglipConfig(
        text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                         vocab_size=64, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        vision_config=dict(hidden_size=1152, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           patch_size=14, image_size=224, vision_use_head=False),
    )  # fmt: skip
    torch.manual_seed(0)
    model = SiglipModel(cfg).eval()
    _randomise_norm(model.vision_model.post_layernorm, 2)
    model.save_pretrained(root)
    SiglipImageProcessor(image_mean=SIG_MEAN, image_std=SIG_STD).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def stats_files(tmp_path_factory) -> dict[str, Path]:
    """The same statistics as upstream's torch.save dict and as safetensors."""
    root = tmp_path_factory.mktemp("stats")
    gen = torch.Generator().manual_seed(3)
    stats = {"mean": torch.randn(768, 32, 32, generator=gen) * 0.3,
             "var": torch.rand(768, 32, 32, generator=gen) * 2 + 0.1}  # fmt: skip
    torch.save(stats, root / "stat.pt")
    save_file(stats, root / "stat.safetensors")
    return {"pt": root / "stat.pt", "safetensors": root / "stat.safetensors"}


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (470, 500, 3), dtype=np.uint8)).save(path)  # crops to 464x496
    return path


# ---- the reference: upstream's code path, step by step ----------------------------------------


def upstream_load_image(path) -> torch.Tensor:
    """inference_utils.load_input_image: centre crop to multiples of 16, [-1, 1]."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    nw, nh = w // 16 * 16, h // 16 * 16
    left, top = (w - nw) // 2, (h - nh) // 2
    img = img.crop((left, top, left + nw, top + nh))
    return torch.from_numpy(np.asarray(img, np.uint8).astype("float32")).permute(2, 0, 1)[None] / 127.5 - 1.0


def upstream_dinov2(folder, stat_path):
    """DINOv2Encoder + DINOv2VAE.encode (resize_target 448, normalize_layernorm_affine, stats):
    returns encode(images [B, 3, H, W] in [-1, 1])."""
    from transformers import AutoImageProcessor, AutoModel

    encoder = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    encoder.layernorm.elementwise_affine = False
    encoder.layernorm.weight = None
    encoder.layernorm.bias = None
    num_special = 1 + int(getattr(encoder.config, "num_register_tokens", 0))
    proc = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    mean = torch.tensor(proc.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(proc.image_std, dtype=torch.float32).view(1, 3, 1, 1)
    stats = torch.load(stat_path, map_location="cpu")
    lat_mean, lat_var = stats["mean"].float().unsqueeze(0), stats["var"].float().unsqueeze(0)

    @torch.no_grad()
    def encode(images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        x = (images + 1.0) / 2.0
        if h != 448 or w != 448:
            x = F.interpolate(x.to(torch.float32), size=(448, 448), mode="bicubic", align_corners=False)
        x = (x - mean) / std
        tokens = encoder(x).last_hidden_state[:, num_special:]
        n, c = tokens.shape[1], tokens.shape[2]
        g = int(math.isqrt(n))
        z = tokens.transpose(1, 2).contiguous().view(b, c, g, g)
        return (z.float() - lat_mean) / torch.sqrt(lat_var + 1e-5)

    return encode


def upstream_siglip(folder):
    """ScaleRAEEncoder + ScaleRAEVAE.encode (resize_target 224 with antialias, post_layernorm
    bypassed, affine-free layer norm eps 1e-6): returns encode(images)."""
    from transformers import AutoImageProcessor, AutoModel

    full = AutoModel.from_pretrained(folder, local_files_only=True)
    tower = getattr(full, "vision_model", full).eval()
    tower.post_layernorm = torch.nn.Identity()
    hidden = int(getattr(full.config, "vision_config", full.config).hidden_size)
    proc = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    mean = torch.tensor(proc.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(proc.image_std, dtype=torch.float32).view(1, 3, 1, 1)

    @torch.no_grad()
    def encode(images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        x = (images + 1.0) / 2.0
        if h != 224 or w != 224:
            x = F.interpolate(
                x.to(torch.float32), size=(224, 224), mode="bicubic", align_corners=False, antialias=True
            )
        x = (x - mean) / std
        tokens = tower(x).last_hidden_state
        tokens = F.layer_norm(tokens.float(), (hidden,), weight=None, bias=None, eps=1e-6)
        n, c = tokens.shape[1], tokens.shape[2]
        g = int(math.isqrt(n))
        return tokens.transpose(1, 2).contiguous().view(b, c, g, g)

    return encode


# ---- parity -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dino(dino_dir, stats_files):
    return load_rae_encoder(dino_dir, "dinov2", stats=stats_files["pt"])


@pytest.fixture(scope="module")
def sig(sig_dir):
    return load_rae_encoder(sig_dir, "siglip")


def _delta(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def test_dinov2_matches_upstream(dino, dino_dir, stats_files, image_file):
    """A 496x464 photo (resized) and a 448x448 batch of two (no resize) against the reference;
    the safetensors statistics are the same tensors as upstream's stat.pt."""
    reference = upstream_dinov2(dino_dir, stats_files["pt"])
    z = dino.encode(image_file)
    assert tuple(z.shape) == (1, 768, 32, 32) and z.dtype == torch.float32
    d_photo = _delta(z, reference(upstream_load_image(image_file)))
    square = torch.rand(2, 3, 448, 448, generator=torch.Generator().manual_seed(5)) * 2 - 1
    d_square = _delta(dino.encode(square), reference(square))
    print(f"dinov2 max|Δ| vs upstream path: photo {d_photo:.2e}, 448² batch {d_square:.2e}")
    assert d_photo <= TOL and d_square <= TOL
    assert float(z.std()) > 0.1  # not a constant: the reference is not trivially matched
    st, pt = read_rae_stats(stats_files["safetensors"]), read_rae_stats(stats_files["pt"])
    assert torch.equal(st.mean, pt.mean) and torch.equal(st.var, pt.var)


def test_siglip_matches_upstream(sig, sig_dir, image_file):
    reference = upstream_siglip(sig_dir)
    z = sig.encode(image_file)
    assert tuple(z.shape) == (1, 1152, 16, 16) and z.dtype == torch.float32
    d_photo = _delta(z, reference(upstream_load_image(image_file)))
    square = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(6)) * 2 - 1
    d_square = _delta(sig.encode(square), reference(square))
    print(f"siglip max|Δ| vs upstream path: photo {d_photo:.2e}, 224² batch {d_square:.2e}")
    assert d_photo <= TOL and d_square <= TOL
    # Per token: zero mean, unit variance over the 1152 channels (the affine-free LayerNorm).
    torch.testing.assert_close(z.mean(1), torch.zeros(1, 16, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(1, unbiased=False), torch.ones(1, 16, 16), atol=1e-3, rtol=0)


def test_degrade_sigma_is_the_flow_form(sig, image_file):
    z, s0 = encode_image_rae(sig, image_file)
    zn, s = encode_image_rae(sig, image_file, degrade_sigma=0.4, seed=7)
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(7))
    assert (s0, s) == (0.0, 0.4)
    torch.testing.assert_close(zn, 0.6 * z + 0.4 * eps)


# ---- the CLI ----------------------------------------------------------------------------------


def _pidtrt(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from pid_trt.cli.main import app; app()", *map(str, args)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)


def test_cli_dinov2_end_to_end(dino, dino_dir, stats_files, image_file, tmp_path):
    out = tmp_path / "photo.safetensors"
    res = _pidtrt("encode-image", image_file, "--backbone", "dinov2", "--encoder", dino_dir,
                  "--rae-stats", stats_files["pt"], "--degrade-sigma", 0.2, "--seed", 3, "-o", out)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "[1, 768, 32, 32]" in res.stdout and "2048x2048" in res.stdout
    lf = read_latent_file(out, get_preset("dinov2").config)  # fits the released dinov2 net
    assert lf.backbone == "dinov2" and lf.degrade_sigma.tolist() == [pytest.approx(0.2)]
    eps = torch.randn(lf.latent.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(lf.latent, 0.8 * dino.encode(image_file) + 0.2 * eps, atol=TOL, rtol=0)


def test_cli_siglip(sig, sig_dir, image_file, tmp_path):
    """In-process (the subprocess run above covers the entry point): SigLIP, clean."""
    out = tmp_path / "photo.safetensors"
    res = CliRunner().invoke(
        app,
        ["encode-image", str(image_file), "--backbone", "siglip", "--encoder", str(sig_dir), "-o", str(out)],
    )
    assert res.exit_code == 0, res.output
    lf = read_latent_file(out, get_preset("siglip").config)
    assert tuple(lf.latent.shape) == (1, 1152, 16, 16) and lf.backbone == "siglip"
    assert lf.degrade_sigma.tolist() == [0.0]
    assert _delta(lf.latent, sig.encode(image_file)) <= TOL


# ---- bad input: one line, exit 2, nothing written ---------------------------------------------


def _refused(tmp_path, *args, match: str) -> None:
    out = tmp_path / "l.safetensors"
    res = CliRunner().invoke(app, ["encode-image", *map(str, args), "-o", str(out)])
    assert res.exit_code == 2, res.output
    assert match in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not out.exists()


def test_cli_refuses_bad_inputs(dino_dir, sig_dir, stats_files, image_file, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    dino = ("--backbone", "dinov2", "--encoder", dino_dir)
    # statistics: missing, none given, without mean / var, the wrong shape
    _refused(bad, image_file, *dino, "--rae-stats", tmp_path / "nope.pt", match="file not found")
    _refused(bad, image_file, *dino, match="--rae-stats")
    torch.save({"mean": torch.zeros(768, 32, 32)}, tmp_path / "no_var.pt")
    _refused(bad, image_file, *dino, "--rae-stats", tmp_path / "no_var.pt", match="no 'var'")
    save_file({"avg": torch.zeros(3)}, tmp_path / "no_mean.safetensors")
    _refused(bad, image_file, *dino, "--rae-stats", tmp_path / "no_mean.safetensors", match="'mean' or 'var'")
    torch.save({"mean": torch.zeros(768, 16, 16), "var": torch.ones(768, 16, 16)}, tmp_path / "small.pt")
    _refused(bad, image_file, *dino, "--rae-stats", tmp_path / "small.pt", match="[768, 32, 32]")
    # an encoder folder of another model, both ways, and no folder
    _refused(bad, image_file, "--backbone", "dinov2", "--encoder", sig_dir, "--rae-stats", stats_files["pt"],
             match="is a 'siglip' model")  # fmt: skip
    _refused(bad, image_file, "--backbone", "siglip", "--encoder", dino_dir, match="'dinov2_with_registers'")
    _refused(bad, image_file, "--backbone", "siglip", match="--encoder DIR")
    _refused(bad, image_file, "--backbone", "siglip", "--encoder", sig_dir, "--rae-stats", stats_files["pt"],
             match="no statistics")  # fmt: skip
    # an image that cannot hold one 14-pixel patch (smaller ones than the input are resized up)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((12, 640, 3), np.uint8)).save(small)
    _refused(bad, small, *dino, "--rae-stats", stats_files["pt"], match="too small")
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((256, 13, 3), np.uint8)).save(tiny)
    _refused(bad, tiny, "--backbone", "siglip", "--encoder", sig_dir, match="at least 14 pixels")
    assert list(bad.iterdir()) == []


def test_stats_file_with_code_is_refused(tmp_path):
    """A pickle that would run code on load is refused, and the code does not run."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"mean": Payload(), "var": torch.ones(1)}, f, protocol=2)
    with pytest.raises(InputFileError, match="refused"):
        read_rae_stats(path)
    assert not (tmp_path / "ran").exists()
    with pytest.raises(InputFileError, match="negative"):
        torch.save({"mean": torch.zeros(1), "var": -torch.ones(1)}, tmp_path / "neg.pt")
        read_rae_stats(tmp_path / "neg.pt")


def test_library_refusals(dino_dir, sig_dir, stats_files, dino):
    with pytest.raises(ConfigError, match="needs RAE latent statistics"):
        load_rae_encoder(dino_dir, "dinov2")
    with pytest.raises(ConfigError, match="no representation encoder"):
        load_rae_encoder(dino_dir, "flux")
    with pytest.raises(InputFileError, match="too small"):
        dino.encode(torch.zeros(1, 3, 448, 13))


def test_cli_siglip_many_images_and_sigmas(sig, sig_dir, image_file, tmp_path):
    """Two images, one too small (it fails alone), two sigmas: one latent per sigma of the
    good image, the noise of its index (seed + 0) in the flow form."""
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((12, 256, 3), np.uint8)).save(small)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["encode-image", str(image_file), str(small), "--backbone", "siglip",
                                   "--encoder", str(sig_dir), "--degrade-sigma", "0,0.3", "--seed", "9",
                                   "-o", f"{out}/"])  # fmt: skip
    assert res.exit_code == 2 and "failed 1 of 2" in res.output and "too small" in res.output, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "photo_sigma0.000.safetensors",
        "photo_sigma0.300.safetensors",
    ]
    z = sig.encode(image_file)
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(9))
    assert _delta(read_latent_file(out / "photo_sigma0.000.safetensors").latent, z) <= TOL
    assert _delta(read_latent_file(out / "photo_sigma0.300.safetensors").latent, 0.7 * z + 0.3 * eps) <= TOL


@pytest.mark.slow  # a CLI encode at 448x448 beside upstream's reference (~12 s); the quick tier keeps the dinov2 CLI path in test_cli_dinov2_end_to_end
def test_dinov2_image_under_448_equals_upstream(dino, dino_dir, stats_files, tmp_path):
    """An ImageNet-sized photo (333x300, cropped to 320x288: under 448 a side) through the real
    CLI: one warning line, exit 0, and the latent of upstream's encode (bicubic up to 448, the
    processor's mean / std, the tower, the statistics: ``upstream_dinov2`` above); a 40x30
    tensor too. What cannot hold one 14-pixel patch stays refused."""
    path = tmp_path / "imagenet.png"
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (300, 333, 3), dtype=np.uint8)).save(path)
    out = tmp_path / "small.safetensors"
    res = subprocess.run(
        [sys.executable, "-m", "pid_trt.cli.main", "encode-image", str(path), "--backbone", "dinov2",
         "--encoder", str(dino_dir), "--rae-stats", str(stats_files["pt"]), "-o", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "320x288" in warnings[0] and "448x448" in warnings[0], res.stderr
    reference = upstream_dinov2(dino_dir, stats_files["pt"])
    expected = reference(upstream_load_image(path))
    d_file = _delta(read_latent_file(out).latent, expected)
    small = torch.rand(1, 3, 30, 40, generator=torch.Generator().manual_seed(8)) * 2 - 1
    d_tensor = _delta(dino.encode(small), reference(small))
    print(f"dinov2 under 448: max|Δ| vs upstream: 320x288 file {d_file:.2e}, 40x30 tensor {d_tensor:.2e}")
    assert d_file <= TOL and d_tensor <= TOL
    assert float(expected.std()) > 0.1
    with pytest.raises(InputFileError, match="at least 14 pixels"):
        dino.encode(torch.zeros(1, 3, 13, 64))
