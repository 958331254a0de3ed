"""Outputs that say how they were made: the ``pid-trt`` provenance in PNG / JPEG / WebP, read
back by ``pidtrt info``; a missing or malformed one reported in one line, never a crash."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pid_trt.config import TINY, get_preset
from pid_trt.io import write_latent_file
from pid_trt.io.provenance import (
    KEY,
    WEIGHTS_LICENCE,
    ProvenanceAbsent,
    embed_png,
    for_decode,
    read_provenance,
    save_options,
)
from pid_trt.netspec import NetSpec
from pid_trt.options import NetOptions

C = TINY.lq_latent_channels


def cli(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    cmd = [sys.executable, "-m", "pid_trt.cli.main", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def decoded(tmp_path_factory) -> Path:
    """`pidtrt decode` of a tiny batch-2 latent (sigmas 0.25 / 0.5) at seed 13, 3 steps, 2x2 tiles."""
    tmp = tmp_path_factory.mktemp("prov")
    gen = torch.Generator().manual_seed(3)
    write_latent_file(
        tmp / "lat.safetensors",
        torch.randn(2, C, 4, 4, generator=gen),
        degrade_sigma=torch.tensor([0.25, 0.5]),
    )
    res = cli(
        "decode", tmp / "lat.safetensors", "--backbone", "tiny", "--random-weights", "--seed", "13", "--steps", "3",
        "--tiles", "2x2", "--threads", "1", "-o", tmp / "out.png",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return tmp


def test_png_round_trips_through_pidtrt_info(decoded: Path) -> None:
    res = cli("info", decoded / "out_1.png", "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    # the decode's own settings, as given on its command line
    assert got["seed"] == 13 and got["steps"] == 3 and got["size"] == "128x128"
    assert got["backend"] == "torch" and got["precision"] == "fp32" and got["device"] == "cpu"
    assert got["degrade_sigma"] == [0.25, 0.5] and got["batch"] == 2
    assert got["tiles"].startswith("2x2 of ")
    assert got["net"] == "tiny" and got["weights"] == "random:0" and got["checkpoint"] is None
    assert got["caption"] == "stand-in" and got["licence"] is None
    assert got["version"] and got == json.loads(cli("info", decoded / "out_0.png", "--json").stdout)


def test_info_prints_a_table(decoded: Path) -> None:
    res = cli("info", decoded / "out_0.png")
    assert res.returncode == 0, res.stderr
    rows = dict(line.split(None, 1) for line in res.stdout.splitlines())
    assert rows["seed"] == "13" and rows["steps"] == "3" and rows["size"] == "128x128"
    assert rows["backend"] == "torch" and rows["precision"] == "fp32"
    assert rows["degrade_sigma"] == "0.25, 0.5"


def test_pixels_are_unchanged_by_the_chunk(decoded: Path, tmp_path: Path) -> None:
    res = cli(
        "decode", decoded / "lat.safetensors", "--backbone", "tiny", "--random-weights", "--seed", "13",
        "--steps", "3", "--tiles", "2x2", "--threads", "1", "-o", tmp_path / "img.safetensors",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    from safetensors.torch import load_file

    image = load_file(str(tmp_path / "img.safetensors"))["image"]
    want = ((image.double().clamp(-1, 1) + 1) * 127.5).floor().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(np.asarray(Image.open(decoded / "out_0.png")), want[0])


def write_png_with(path: Path, text: str) -> None:
    info = PngInfo()
    info.add_itxt(KEY, text)
    Image.new("RGB", (8, 8)).save(path, format="PNG", pnginfo=info)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", "pid-trt provenance is not JSON"),
        # the same CLI path again, a process each: full suite only
        *(
            pytest.param(text, words, marks=pytest.mark.slow)
            for text, words in [
                ("[1, 2]", "pid-trt provenance is list, expected a JSON object"),
                ('{"seed": 1}', "pid-trt provenance lacks backend, precision, steps, size"),
                (
                    '{"seed": "one", "backend": "torch", "precision": "fp32", "steps": 4, "size": "8x8"}',
                    "field 'seed' is str, expected int",
                ),
                (
                    '{"seed": true, "backend": "torch", "precision": "fp32", "steps": 4, "size": "8x8"}',
                    "field 'seed' is bool, expected int",
                ),
            ]
        ),
    ],
)
def test_tampered_chunk_is_one_line_exit_2(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.png"
    write_png_with(path, text)
    res = cli("info", path)
    assert res.returncode == 2
    assert res.stderr.startswith(f"error: image {path}: ") and words in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


# slow: pidtrt info refusals in processes (~4 s); the round trip through pidtrt info stays quick
@pytest.mark.slow
def test_absent_chunk_and_not_an_image(tmp_path: Path) -> None:
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    res = cli("info", plain)
    assert (
        res.returncode == 1
        and res.stderr == f"error: image {plain}: no pid-trt provenance (PNG without a pid-trt entry)\n"
    )
    with pytest.raises(ProvenanceAbsent):
        read_provenance(plain)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    res = cli("info", text)
    assert res.returncode == 2 and "not a readable PNG, JPEG or WebP" in res.stderr
    assert res.stderr.count("\n") == 1


RECORD = {
    "seed": 5,
    "backend": "tensorrt",
    "precision": "fp8",
    "steps": 4,
    "size": "64x32",
    "prompt": ['a "b" <c> & é'],
}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_each_format_carries_it(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"x.{fmt.lower()}"
    Image.new("RGB", (64, 32), (10, 20, 30)).save(
        path, format=fmt, **save_options(fmt, {KEY: json.dumps(RECORD)})
    )
    assert read_provenance(path) == RECORD
    res = cli("info", path, "--json")
    assert res.returncode == 0 and json.loads(res.stdout) == RECORD


def test_embedding_into_png_bytes_equals_a_pil_save() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    text = {KEY: json.dumps(RECORD)}
    plain, with_text = io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels).save(plain, format="PNG")
    Image.fromarray(pixels).save(with_text, format="PNG", **save_options("PNG", text))
    assert embed_png(plain.getvalue(), text) == with_text.getvalue()


def test_released_weights_carry_the_licence_and_the_checkpoint_hash(tmp_path: Path) -> None:
    ckpt = tmp_path / "model_ema_bf16.pth"
    ckpt.write_bytes(b"stand-in bytes")
    preset = get_preset("flux", "2k")
    spec = NetSpec(preset.config, preset, ckpt, random_weights=False)
    made = for_decode(
        spec, "tensorrt", "bf16", "cuda:0", seed=1, steps=4, height=2048, width=2048, degrade_sigma=[0.0]
    )
    assert made.checkpoint == "model_ema_bf16.pth"
    assert made.checkpoint_sha256 == hashlib.sha256(b"stand-in bytes").hexdigest()[:16]
    assert made.licence == WEIGHTS_LICENCE and "NSCLv1" in made.licence and "non-commercial" in made.licence
    assert made.backbone == "flux" and made.ckpt_type == "2k" and made.size == "2048x2048"
    random = NetSpec(preset.config, preset, None, random_weights=True, weights_seed=4)
    assert (
        for_decode(
            random, "torch", "fp32", "cpu", seed=1, steps=4, height=64, width=64, degrade_sigma=[0.0]
        ).licence
        is None
    )


def test_the_servers_model_parameters_name_the_licence(tmp_path: Path) -> None:
    from pid_trt.serve.config import ModelOptions

    ckpt = tmp_path / "model_ema_bf16.pth"
    ckpt.write_bytes(b"x")
    assert ModelOptions(NetOptions(backbone="flux", checkpoint=ckpt)).check()["licence"] == WEIGHTS_LICENCE
    assert (
        ModelOptions(NetOptions(backbone="tiny", random_weights=True)).check()["licence"]
        == "none: random weights"
    )
