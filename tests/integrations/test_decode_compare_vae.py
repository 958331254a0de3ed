"""`pidtrt decode LATENT ... --compare-vae --vae DIR` end to end on the CPU: a tiny random FLUX.1
AutoencoderKL saved to a folder (built offline), a tiny random-weight PiD, the real CLI.

The VAE's image is checked against diffusers' own decode of the latent de-normalised with
FLUX.1's published constants (scaling 0.3611, shift 0.1159: upstream's pipeline_registry and
the released VAE config), the side-by-side's halves against PiD's PNG and a bicubic upscale of
that decode, and the manifest's drift against the figures of the written images."""

from __future__ import annotations

import json

import diffusers  # noqa: F401 - the [diffusers] extra: a missing package fails here, never skips
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pid_trt.cli.main import app
from pid_trt.config import TINY
from pid_trt.integrations.colour import colour_drift
from pid_trt.io import write_latent_file
from tests.integrations import diffusers_helpers as helpers

FLUX_SCALE, FLUX_SHIFT = 0.3611, 0.1159
H, W = 4, 6  # latent cells: PiD 128x192 (tiny: 32 px a cell), the VAE 32x48 (8 px a cell)
PID = ("--backbone", "tiny", "--random-weights", "--threads", "1")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"PIDTRT_TEXT_ENCODER": ""})


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae") / "flux-vae"
    helpers.flux_vae().save_pretrained(folder)
    return folder


def latent_file(path, batch=1, seed=0, backbone="flux", channels=TINY.lq_latent_channels):
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(batch, channels, H, W, generator=gen)
    caption = torch.randn(batch, TINY.txt_max_length, TINY.txt_embed_dim, generator=gen)
    write_latent_file(path, latent, caption, torch.zeros(batch), backbone=backbone)
    return latent


def direct_decode(vae_dir, latent) -> torch.Tensor:
    """diffusers' own decode of a FLUX.1 PiD latent: [B, 3, h, w] float in [-1, 1]."""
    vae = diffusers.AutoencoderKL.from_pretrained(vae_dir).eval()
    with torch.no_grad():
        return vae.decode(latent / FLUX_SCALE + FLUX_SHIFT).sample.clamp(-1, 1)


def uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> [H, W, 3] uint8 by the output contract: floor((x + 1) * 127.5)."""
    return ((image.clamp(-1, 1) + 1) * 127.5).floor().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def test_one_file(tmp_path, vae_dir):
    latent = latent_file(tmp_path / "lat.safetensors")
    out = tmp_path / "out" / "x.png"
    out.parent.mkdir()
    res = invoke("decode", tmp_path / "lat.safetensors", *PID, "--compare-vae", "--vae", vae_dir, "-o", out)
    assert res.exit_code == 0, res.output
    assert "green-magenta" in res.stdout and "delta E" in res.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "x.png",
        "x_compare.json",
        "x_compare.png",
        "x_vae.png",
    ]

    # the VAE's own image is diffusers' decode of the de-normalised latent, at the LDM's size
    ref = direct_decode(vae_dir, latent)
    vae_png = png(out.parent / "x_vae.png")
    assert vae_png.shape == (H * 8, W * 8, 3)
    assert np.abs(vae_png.astype(int) - uint8(ref[0]).astype(int)).max() <= 1  # a float ulp across a level

    # the side-by-side: a label strip over [VAE upscaled to PiD's size | gap | PiD as written]
    pid_png = png(out)
    assert pid_png.shape == (H * 32, W * 32, 3)
    pair = png(out.parent / "x_compare.png")
    big_h, big_w = pid_png.shape[:2]
    strip = pair.shape[0] - big_h
    assert strip > 0 and pair.shape[1] > 2 * big_w
    assert np.array_equal(pair[strip:, -big_w:], pid_png)
    up = torch.nn.functional.interpolate(ref, size=(big_h, big_w), mode="bicubic", align_corners=False)
    assert np.abs(pair[strip:, :big_w].astype(int) - uint8(up[0]).astype(int)).max() <= 1
    for half in (pair[:strip, :big_w], pair[:strip, -big_w:]):  # each label strip holds text
        assert len(np.unique(half.reshape(-1, 3), axis=0)) > 2

    # the record: the drift of PiD against the upscaled VAE image (8-bit PNGs here: loose tolerance)
    record = json.loads((out.parent / "x_compare.json").read_text())
    assert (record["ldm"], record["vae"], record["size"], record["vae_size"]) == (
        "flux", "AutoencoderKL", [W * 32, H * 32], [W * 8, H * 8],
    )  # fmt: skip
    assert record["files"] == {"pid": ["x.png"], "vae": ["x_vae.png"], "compare": ["x_compare.png"]}
    again = colour_drift(tensor(pid_png), tensor(uint8(up[0])))
    drift = record["colour_drift"]
    assert drift["space"].startswith("CIELAB")
    for key in ("mean_chroma_shift", "green_magenta_bias", "blue_yellow_bias", "mean_delta_e"):
        assert drift[key] == pytest.approx(getattr(again, key), abs=0.5), key


def test_many_files_manifest_and_resume(tmp_path, vae_dir):
    src = tmp_path / "lat"
    src.mkdir()
    latent_file(src / "a.safetensors", seed=1)
    batch = latent_file(src / "b.safetensors", batch=2, seed=2)
    out = tmp_path / "out"
    args = ("decode", src, *PID, "--compare-vae", "--vae", vae_dir, "-o", f"{out}/")
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert (
        "decoded 2, skipped 0 (output exists), failed 0 of 2" in res.stdout
        and "compare_vae.json" in res.stdout
    )
    names = ["a.png", "a_compare.json", "a_compare.png", "a_vae.png", "b_0.png", "b_1.png", "b_compare.json",
             "b_compare_0.png", "b_compare_1.png", "b_vae_0.png", "b_vae_1.png", "compare_vae.json"]  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == names
    ref = direct_decode(vae_dir, batch)
    for k in range(2):  # each image of a batched latent has its own VAE image and pair
        got = png(out / f"b_vae_{k}.png").astype(int)
        assert np.abs(got - uint8(ref[k]).astype(int)).max() <= 1
        pair = png(out / f"b_compare_{k}.png")
        assert np.array_equal(pair[-H * 32 :, -W * 32 :], png(out / f"b_{k}.png"))

    m = json.loads((out / "compare_vae.json").read_text())
    assert m["counts"] == {"files": 2, "done": 2, "skipped": 0, "failed": 0, "missing": 0}
    assert (m["backend"], m["precision"], m["device"], m["colour_space"]) == (
        "torch", "fp32", "cpu", "CIELAB (D65, sRGB)",
    )  # fmt: skip
    a, b = m["files"]
    assert (a["latent"], a["output"], a["status"], b["output"]) == (
        str(src / "a.safetensors"),
        "a.png",
        "done",
        "b.png",
    )
    assert b["files"]["vae"] == ["b_vae_0.png", "b_vae_1.png"]
    for key, mean in m["mean_colour_drift"].items():
        assert mean == pytest.approx((a["colour_drift"][key] + b["colour_drift"][key]) / 2, abs=1e-3)

    # resume: a file whose record is gone is done again, the other skipped
    (out / "b_compare.json").unlink()
    before = (out / "a_vae.png").stat().st_mtime_ns
    res = invoke(*args, "--skip-existing")
    assert res.exit_code == 0, res.output
    assert "decoded 1, skipped 1 (output exists)" in res.stdout
    assert (out / "b_compare.json").is_file() and (out / "a_vae.png").stat().st_mtime_ns == before
    m = json.loads((out / "compare_vae.json").read_text())
    assert [e["status"] for e in m["files"]] == ["skipped", "done"] and "colour_drift" in m["files"][0]


@pytest.mark.parametrize(
    "case, message",
    [
        ("no-vae", "--compare-vae needs the LDM's own VAE: pass --vae DIR"),
        ("vae-only", "add --compare-vae"),
        ("channels", "has 4 latent channels, but latent file"),
        ("no-backbone", "names no backbone"),
        ("dinov2-latent", "representation encoder"),
        ("dinov2-net", "representation encoder"),
        ("not-a-folder", "not a directory"),
        ("server", "drop --compare-vae"),
    ],
)
def test_refused_in_one_line_nothing_written(tmp_path, vae_dir, case, message):
    lat = tmp_path / "lat.safetensors"
    latent_file(lat, backbone={"no-backbone": None, "dinov2-latent": "dinov2"}.get(case, "flux"))
    vae = vae_dir
    if case == "channels":
        vae = tmp_path / "sdxl-vae"
        helpers.sdxl_vae().save_pretrained(vae)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out.png"
    opts = {
        "no-vae": ("--compare-vae",),
        "vae-only": ("--vae", vae),
        "not-a-folder": ("--compare-vae", "--vae", lat),
        "server": ("--compare-vae", "--vae", vae, "--server", "http://127.0.0.1:9"),
    }.get(case, ("--compare-vae", "--vae", vae))
    net = {"dinov2-net": ("--backbone", "dinov2", "--random-weights"), "server": ()}.get(case, PID)
    res = invoke("decode", lat, *net, *opts, "-o", out)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before
