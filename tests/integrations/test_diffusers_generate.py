"""generate() and the `pidtrt generate` / `pidtrt encode-image` commands, end to end on the CPU:
tiny random diffusers pipelines (built offline) and a tiny random-weight PiD."""

from __future__ import annotations

import dataclasses
import json

import diffusers  # noqa: F401 - the [diffusers] extra: a missing package fails here, never skips
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from pid_trt import Decoder
from pid_trt.cli.main import app
from pid_trt.config import TINY, get_preset
from pid_trt.errors import ConfigError
from pid_trt.integrations.diffusers import generate, pid_latent, to_pid_frame
from pid_trt.io import read_latent_file
from pid_trt.io.provenance import read_provenance
from tests.conftest import quick_first
from tests.integrations import diffusers_helpers as helpers

SIZE = 128  # PiD output; the LDM runs at 32x32 (flux / sdxl / qwen latent 4x4, flux2 2x2)
LDM = SIZE // 4

# A tiny PiD per LDM latent: channels and down factor of the backbone.
NETS = {
    "flux": TINY,
    "sdxl": dataclasses.replace(TINY, lq_latent_channels=4),
    "flux2": dataclasses.replace(TINY, lq_latent_channels=128, latent_spatial_down_factor=16),
    "qwenimage": TINY,
}


@pytest.fixture(scope="module")
def decoders():
    """One tiny random-weight Decoder per net config, shared (the first decode warms up)."""
    made: dict[str, Decoder] = {}
    yield made
    for dec in made.values():
        dec.close()


def decoder_for(decoders, backbone) -> Decoder:
    key = NETS[backbone].to_json()
    if key not in decoders:
        decoders[key] = Decoder.load(net_config=NETS[backbone].to_upstream(), random_weights=True)
    return decoders[key]


@pytest.mark.parametrize("backbone", quick_first(NETS))
def test_generate(decoders, backbone, recorder):
    """The decoded latent is the pipeline's latent after step K (unpacked, in PiD's frame) with
    sigma = sigmas[K]; the image is the Decoder's decode of exactly that."""
    pipe = helpers.make_pipeline(backbone)
    steps, k = 5, 3
    dec = decoder_for(decoders, backbone)
    out = generate(
        pipe, dec, None, SIZE, SIZE, k, seed=7, num_inference_steps=steps, **helpers.embeds(backbone)
    )
    assert out.image.shape == (1, 3, SIZE, SIZE) and bool(out.image.abs().le(1).all())
    assert (out.step, out.steps, out.ldm_size, out.backbone) == (k, steps, (LDM, LDM), backbone)
    assert out.caption is None  # a random stand-in net without a caption encoder draws its own
    again = dec.decode(out.latent, degrade_sigma=out.degrade_sigma, seed=7, size=(SIZE, SIZE))
    assert torch.equal(again, out.image)

    gen = torch.Generator().manual_seed(7)
    pipe(height=LDM, width=LDM, num_inference_steps=steps, generator=gen, output_type="latent",
         callback_on_step_end=recorder, **helpers.embeds(backbone))  # fmt: skip
    latent, sigma = to_pid_frame(recorder.latents[k - 1], float(pipe.scheduler.sigmas[k]), backbone)
    torch.testing.assert_close(out.latent, pid_latent(pipe, latent, backbone, LDM, LDM), atol=0, rtol=0)
    assert out.degrade_sigma == pytest.approx(sigma) and 0 < out.degrade_sigma < 1


def test_generate_refuses_a_net_that_cannot_take_the_latent(decoders):
    pipe = helpers.make_pipeline("sdxl")
    dec = decoder_for(decoders, "flux")
    with pytest.raises(ConfigError, match="4 channels"):
        generate(pipe, dec, None, SIZE, SIZE, **helpers.embeds("sdxl"))
    with pytest.raises(ConfigError, match="capture step 6"):
        generate(pipe, dec, None, SIZE, SIZE, 6, backbone="flux", num_inference_steps=5)
    with pytest.raises(ConfigError, match="pairs of latent cells"):
        generate(pipe, dec, None, 160, 128, backbone="flux")


# ------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    """A tiny FLUX.1 pipeline folder with CLIP / T5 text encoders and word-level tokenizers."""
    return helpers.make_flux_dir(tmp_path_factory.mktemp("flux") / "pipe")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"PIDTRT_TEXT_ENCODER": ""})


def test_cli_generate_then_decode_reproduces_the_image(flux_dir, tmp_path):
    out, lat = tmp_path / "out.png", tmp_path / "lat.safetensors"
    res = invoke(
        "generate", "--pipeline", flux_dir, "--prompt", "a red fox in snow", "--res", SIZE, "--pid", "tiny",
        "--random-weights", "--steps", 7, "--seed", 3, "--save-latent", lat, "-o", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "latent after step 6 of 7" in res.output  # round(24 * 7 / 28)
    assert Image.open(out).size == (SIZE, SIZE)
    with safe_open(str(lat), "pt") as f:
        assert sorted(f.keys()) == ["degrade_sigma", "latent"] and f.metadata() == {"backbone": "flux"}
    lf = read_latent_file(lat, TINY)
    assert lf.latent.shape == (1, 16, 4, 4) and lf.degrade_sigma.item() == pytest.approx(1 / 7)

    again = tmp_path / "again.png"
    res = invoke("decode", lat, "--backbone", "tiny", "--random-weights", "--seed", 3, "-o", again)
    assert res.exit_code == 0, res.output
    # the same pixels; each PNG says how it was made (generate: from the prompt, the LDM's capture)
    assert np.asarray(Image.open(out)).tolist() == np.asarray(Image.open(again)).tolist()
    made = read_provenance(out)
    assert made["caption"] == "prompt" and made["prompt"] == ["a red fox in snow"] and made["seed"] == 3
    assert made["extra"] == {"ldm": "flux", "ldm_steps": 7, "capture_step": 6}
    assert read_provenance(again)["caption"] == "stand-in"


def test_cli_generate_refuses(flux_dir, tmp_path):
    net = tmp_path / "net.json"
    net.write_text(json.dumps(NETS["flux2"].to_upstream()))
    res = invoke("generate", "--pipeline", flux_dir, "--prompt", "x", "--backbone", "flux", "--net-config", net,
                 "--random-weights", "-o", tmp_path / "o.png")  # fmt: skip
    assert res.exit_code == 2 and "128-channel latents at 1/16" in res.output
    res = invoke("generate", "--pipeline", flux_dir, "--prompt", "x", "--pid", "tiny", "--random-weights",
                 "--res", SIZE, "--steps", 4, "--capture-step", 5, "-o", tmp_path / "o.png")  # fmt: skip
    assert res.exit_code == 2 and "capture step 5" in res.output
    res = invoke("generate", "--pipeline", tmp_path, "--prompt", "x", "--pid", "tiny", "--random-weights",
                 "-o", tmp_path / "o.png")  # fmt: skip
    assert res.exit_code == 2 and "model_index.json" in res.output


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "in.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (70, 100, 3), dtype=np.uint8)).save(path)  # crops to 64x96
    return path


@pytest.mark.parametrize("backbone, vae, shape", [("flux2", "flux2_vae", (1, 128, 4, 6)),
                                                  pytest.param("qwenimage", "qwen_vae", (1, 16, 8, 12),
                                                               marks=pytest.mark.slow)])  # fmt: skip
def test_cli_encode_image(image_file, tmp_path, backbone, vae, shape):
    vae_dir = tmp_path / "vae"
    getattr(helpers, vae)().save_pretrained(vae_dir)
    out = tmp_path / "lat.safetensors"
    res = invoke("encode-image", image_file, "--vae", vae_dir, "--backbone", backbone, "--degrade-sigma", 0.25,
                 "--seed", 2, "-o", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    lf = read_latent_file(out, get_preset(backbone, "2kto4k").config)  # fits the released net
    assert tuple(lf.latent.shape) == shape and lf.degrade_sigma.tolist() == [0.25] and lf.backbone == backbone
    clean = tmp_path / "clean.safetensors"
    assert (
        invoke("encode-image", image_file, "--vae", vae_dir, "--backbone", backbone, "-o", clean).exit_code
        == 0
    )
    z = read_latent_file(clean).latent
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(lf.latent, 0.75 * z + 0.25 * eps)


def test_cli_encode_image_refuses(image_file, tmp_path):
    vae_dir = tmp_path / "vae"
    helpers.sdxl_vae().save_pretrained(vae_dir)
    res = invoke(
        "encode-image", image_file, "--vae", vae_dir, "--backbone", "dinov2", "-o", tmp_path / "l.safetensors"
    )
    assert res.exit_code == 2 and "pass --encoder DIR, not --vae" in res.output
    res = invoke(
        "encode-image", image_file, "--vae", vae_dir, "--backbone", "flux", "-o", tmp_path / "l.safetensors"
    )
    assert res.exit_code == 2 and "4-channel" in res.output
    res = invoke("encode-image", tmp_path / "missing.png", "--vae", vae_dir, "--backbone", "sdxl",
                 "-o", tmp_path / "l.safetensors")  # fmt: skip
    assert res.exit_code == 2 and "not found" in res.output


@pytest.mark.slow  # a tiled generate and decode through the CLI (~30 s); the quick tier keeps test_cli_generate_then_decode_reproduces_the_image, and tiled decodes in tests/tiling/
def test_cli_generate_tiles_as_decode_does(flux_dir, tmp_path):
    """--tiles reaches PiD's decode: the image is `pidtrt decode --tiles` of the saved latent,
    bit for bit, and not the one-shot image; a folder run's manifest records the tiling."""
    common = ("--pipeline", flux_dir, "--prompt", "a red fox in snow", "--res", SIZE, "--pid", "tiny",
              "--random-weights", "--steps", 7, "--seed", 3)  # fmt: skip
    tiled, lat = tmp_path / "tiled.png", tmp_path / "lat.safetensors"
    res = invoke(
        "generate", *common, "--tiles", "2x2", "--tile-size", "96x96", "--save-latent", lat, "-o", tiled
    )
    assert res.exit_code == 0, res.output
    again = tmp_path / "again.png"
    res = invoke("decode", lat, "--backbone", "tiny", "--random-weights", "--seed", 3, "--tiles", "2x2",
                 "--tile-size", "96x96", "-o", again)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert np.asarray(Image.open(tiled)).tolist() == np.asarray(Image.open(again)).tolist()
    assert read_provenance(tiled)["tiles"] == read_provenance(again)["tiles"] == "2x2 of 96x96"
    one_shot = tmp_path / "one_shot.png"
    res = invoke("decode", lat, "--backbone", "tiny", "--random-weights", "--seed", 3, "-o", one_shot)
    assert res.exit_code == 0, res.output
    assert np.asarray(Image.open(one_shot)).tolist() != np.asarray(Image.open(tiled)).tolist()

    res = invoke("generate", *common, "--tiles", "2x2", "--tile-size", "96x96", "-o", tmp_path / "run/")
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["tiling"]["tiles"] == "2x2" and manifest["tiling"]["tile_size"] == "96x96"
    (image,) = (tmp_path / "run").glob("*/step*.png")
    assert image.read_bytes() == tiled.read_bytes()
