"""`pidtrt decode --prompt / --caption`: captions from the tool's own encoder, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pid_trt.config import TINY
from pid_trt.io import sample_latent, write_latent_file
from tests.text_helpers import make_tiny_gemma


def _cli(*args: object) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pid_trt.cli.main", *map(str, args)]
    env = {k: v for k, v in os.environ.items() if k != "PIDTRT_TEXT_ENCODER"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def gemma(tmp_path_factory) -> Path:
    return make_tiny_gemma(tmp_path_factory.mktemp("gemma"))


@pytest.mark.slow  # four CLI processes with a tiny Gemma (~20 s); in process: tests/test_decoder.py::test_prompt_is_encoded_by_the_text_encoder
def test_prompt_equals_encode_caption_then_caption(gemma: Path, tmp_path: Path) -> None:
    lat = sample_latent(TINY, 2, 64, 64, seed=2)
    latent = tmp_path / "latent.safetensors"
    write_latent_file(latent, lat.latent)  # no caption inside
    model = ["--backbone", "tiny", "--random-weights", "--seed", "3"]
    prompts = ["a red fox in snow", "blue house by the lake"]

    by_prompt = tmp_path / "p.safetensors"
    res = _cli("decode", latent, "-o", by_prompt, *model, "--text-encoder", gemma,
               "--prompt", prompts[0], "--prompt", prompts[1])  # fmt: skip
    assert res.returncode == 0, res.stderr

    caption = tmp_path / "caption.safetensors"
    res = _cli("encode-caption", *prompts, "--text-encoder", gemma, "-o", caption)
    assert res.returncode == 0, res.stderr
    by_file = tmp_path / "c.safetensors"
    res = _cli("decode", latent, "-o", by_file, *model, "--caption", caption)
    assert res.returncode == 0, res.stderr

    a, b = load_file(str(by_prompt))["image"], load_file(str(by_file))["image"]
    assert a.shape == (2, 3, 64, 64) and torch.equal(a, b)
    # the caption matters: another prompt gives another image
    other = tmp_path / "o.safetensors"
    res = _cli("decode", latent, "-o", other, *model, "--text-encoder", gemma, "--prompt", "green tree")
    assert res.returncode == 0, res.stderr
    assert not torch.equal(load_file(str(other))["image"], a)


def test_prompt_with_a_captioned_latent_is_refused(gemma: Path, tmp_path: Path) -> None:
    lat = sample_latent(TINY, 1, 64, 64, seed=2)
    latent = tmp_path / "latent.safetensors"
    write_latent_file(latent, lat.latent, lat.caption)
    out = tmp_path / "out.png"
    res = _cli("decode", latent, "-o", out, "--backbone", "tiny", "--random-weights",
               "--text-encoder", gemma, "--prompt", "a red fox")  # fmt: skip
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("warning:")]
    assert lines == [f"error: latent file {latent} already has a caption_embedding: drop --prompt, or write "
                     "the latent without one"]  # fmt: skip
    assert not out.exists()


def test_prompt_without_encoder_and_bad_caption_file(tmp_path: Path) -> None:
    lat = sample_latent(TINY, 1, 64, 64, seed=2)
    latent = tmp_path / "latent.safetensors"
    write_latent_file(latent, lat.latent)
    base = ["decode", latent, "-o", tmp_path / "o.png", "--backbone", "tiny", "--random-weights"]
    res = _cli(*base, "--prompt", "a fox")
    assert res.returncode == 2 and "--text-encoder DIR" in res.stderr and "Traceback" not in res.stderr
    wrong = tmp_path / "wrong.safetensors"
    write_latent_file(wrong, lat.latent)  # a latent file is not a caption file
    res = _cli(*base, "--caption", wrong)
    assert res.returncode == 2
    assert "expected exactly one, 'caption_embedding'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o.png").exists()
