"""`pidtrt encode-image` over many images: folders, globs, JSON-lines manifests, sigma lists,
captions, resuming, and the refusals, on a tiny random SDXL VAE (built offline) and a tiny
random Gemma-2 caption encoder. Each latent is checked against a one-image run of the same
command (bit for bit) and the noise against the flow / variance-preserving formula."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pid_trt.cli.main import app
from pid_trt.io import read_latent_file
from pid_trt.jobs.manifest import read_manifest
from pid_trt.text import CaptionEncoder
from tests.integrations import diffusers_helpers as helpers


def invoke(*args):
    return CliRunner().invoke(app, ["encode-image", *map(str, args)], env={"PIDTRT_TEXT_ENCODER": ""})


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    helpers.flux_vae().save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    from tests.text_helpers import make_tiny_gemma

    return make_tiny_gemma(tmp_path_factory.mktemp("gemma"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three images in a folder (png, png, jpg; 64x96 after the crop) and a text file."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.jpg"):
        Image.fromarray(rng.integers(0, 256, (70, 100, 3), dtype=np.uint8)).save(root / name)
    (root / "notes.txt").write_text("not an image")
    return root


def one(vae_dir, image, tmp_path, *extra) -> torch.Tensor:
    """The latent of a one-image run (the command's established form)."""
    out = tmp_path / f"one_{image.stem}.safetensors"
    res = invoke(image, "--vae", vae_dir, "--backbone", "flux", "-o", out, *extra)
    assert res.exit_code == 0, res.output
    return read_latent_file(out).latent


def test_folder_and_glob(vae_dir, photos, tmp_path):
    out = tmp_path / "out"
    res = invoke(photos, "--vae", vae_dir, "--backbone", "flux", "-o", f"{out}/")
    assert res.exit_code == 0, res.output
    assert "encoded 3, skipped 0 (output exists), failed 0 of 3" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["a.safetensors", "b.safetensors", "c.safetensors"]
    for name in ("a.png", "b.png", "c.jpg"):
        lf = read_latent_file(out / f"{name[0]}.safetensors")
        assert torch.equal(lf.latent, one(vae_dir, photos / name, tmp_path)) and lf.backbone == "flux"
    res = invoke(
        f"{photos}/*.png", "--vae", vae_dir, "--backbone", "flux", "-o", tmp_path / "g/{stem}_x.safetensors"
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["a_x.safetensors", "b_x.safetensors"]


def test_manifest_sigmas_and_captions(vae_dir, gemma_dir, photos, tmp_path):
    """Manifest lines with prompts, one with none (--prompt fills it); sigmas 0, 0.5 and 1 as
    a list and a repeat: three files an image, each with its sigma, the image's noise (seed +
    its index, the same for every sigma) and its caption embedding."""
    manifest = tmp_path / "m.jsonl"
    lines = [{"image": str(photos / "a.png"), "prompt": "a red fox"}, {"image": str(photos / "c.jpg")}]
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    out = tmp_path / "out"
    res = invoke("--manifest", manifest, "--vae", vae_dir, "--backbone", "flux", "--degrade-sigma", "0,0.5",
                 "--degrade-sigma", 1, "--seed", 4, "--text-encoder", gemma_dir, "--prompt", "a small house",
                 "-o", f"{out}/")  # fmt: skip
    assert res.exit_code == 0, res.output
    with CaptionEncoder.load(gemma_dir) as enc:
        captions = {"a": enc.encode(["a red fox"]), "c": enc.encode(["a small house"])}
    for index, stem in enumerate(("a", "c")):
        clean = one(vae_dir, photos / f"{stem}.{'png' if stem == 'a' else 'jpg'}", tmp_path)
        eps = torch.randn(clean.shape, generator=torch.Generator().manual_seed(4 + index))
        for sigma in (0.0, 0.5, 1.0):
            lf = read_latent_file(out / f"{stem}_sigma{sigma:.3f}.safetensors")
            assert lf.degrade_sigma.tolist() == [sigma]
            torch.testing.assert_close(lf.latent, (1 - sigma) * clean + sigma * eps, atol=1e-6, rtol=0)
            assert torch.equal(lf.caption, captions[stem])
    assert len(list(out.iterdir())) == 6


def test_skip_existing_resumes(vae_dir, photos, tmp_path):
    out = tmp_path / "out"
    args = (photos, "--vae", vae_dir, "--backbone", "flux", "--degrade-sigma", "0.2,0.4", "-o", f"{out}/")
    assert invoke(*args).exit_code == 0
    kept = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "b_sigma0.400.safetensors").unlink()  # the last file of b: b counts as not done
    res = invoke(*args, "--skip-existing")
    assert res.exit_code == 0, res.output
    assert "encoded 1, skipped 2 (output exists)" in res.output
    now = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert set(now) == set(kept)
    assert {n for n in now if now[n] != kept[n]} == {"b_sigma0.200.safetensors", "b_sigma0.400.safetensors"}


def test_a_bad_image_fails_alone(vae_dir, photos, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "out"
    res = invoke(photos / "a.png", broken, "--vae", vae_dir, "--backbone", "flux", "-o", f"{out}/")
    assert res.exit_code == 2, res.output
    assert "encoded 1, skipped 0 (output exists), failed 1 of 2" in res.output and "broken.png" in res.output
    assert [p.name for p in out.iterdir()] == ["a.safetensors"]


def test_missing_prompt_with_a_text_encoder_fails_that_image(vae_dir, gemma_dir, photos, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": str(photos / "a.png"), "prompt": "a fox"}) + "\n"
                        + json.dumps({"image": str(photos / "b.png")}) + "\n")  # fmt: skip
    out = tmp_path / "out"
    res = invoke("--manifest", manifest, "--vae", vae_dir, "--backbone", "flux", "--text-encoder", gemma_dir,
                 "-o", f"{out}/")  # fmt: skip
    assert res.exit_code == 2 and "no prompt" in res.output, res.output
    assert [p.name for p in out.iterdir()] == ["a.safetensors"]


@pytest.mark.parametrize(
    "lines, match",
    [
        ([{"prompt": "a fox"}], 'line 1: no "image"'),
        (["{not json"], "line 1: not valid JSON"),
        ([{"image": "x.png"}, [1, 2]], "line 2: a JSON list"),
        ([{"image": 3}], 'a int "image"'),
        ([{"image": "x.png", "prompt": 5}], '"prompt" is a int'),
        ([], "no lines"),
    ],
)
def test_bad_manifest_writes_nothing(vae_dir, photos, tmp_path, lines, match):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    out = tmp_path / "out"
    res = invoke(photos, "--manifest", manifest, "--vae", vae_dir, "--backbone", "flux", "-o", f"{out}/")
    assert res.exit_code == 2 and match in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not out.exists()


def test_refusals(vae_dir, photos, tmp_path):
    out = tmp_path / "out"
    cases = [
        ((photos, "--degrade-sigma", "0,1.5"), "degrade sigma 1.5"),
        ((photos, "--degrade-sigma", "x"), "--degrade-sigma 'x'"),
        ((photos, "--prompt", "a fox"), "needs --text-encoder"),
        ((photos, "-o", tmp_path / "one.safetensors"), "names one file, but 3 images"),
        (("--manifest", tmp_path / "missing.jsonl"), "file not found"),
        ((tmp_path / "empty_dir",), "has no .png"),
        ((), "no images"),
    ]
    (tmp_path / "empty_dir").mkdir()
    for args, match in cases:
        extra = () if "-o" in args else ("-o", f"{out}/")
        res = invoke(*args, "--vae", vae_dir, "--backbone", "flux", *extra)
        assert res.exit_code == 2 and match in res.output, (args, res.output)
        assert not out.exists() and not (tmp_path / "one.safetensors").exists()


def test_manifest_paths_relative_to_its_folder(photos, tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png"}))
    link = tmp_path / "a.png"
    link.write_bytes((photos / "a.png").read_bytes())
    samples = read_manifest(tmp_path / "m.jsonl")
    assert [s.image for s in samples] == [tmp_path / "a.png"] and samples[0].prompt is None
