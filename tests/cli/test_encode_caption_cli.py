"""`pidtrt encode-caption` on a tiny random Gemma-2 built offline: rows, metadata, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from pid_trt.atomic import TEMP_PREFIX
from pid_trt.cli.main import app
from pid_trt.text import MAX_LENGTH, TEXT_ENCODER_ENV, CaptionEncoder
from tests.text_helpers import TINY_HIDDEN, make_tiny_gemma


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return make_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma"))


def invoke(*args: str, env: dict | None = None):
    env = {TEXT_ENCODER_ENV: "", **(env or {})}  # an outer $PIDTRT_TEXT_ENCODER must not leak in
    return CliRunner().invoke(app, ["encode-caption", *map(str, args)], env=env)


def read(path) -> tuple[torch.Tensor, list[str]]:
    with safe_open(str(path), "pt") as f:
        assert list(f.keys()) == ["caption_embedding"]
        return f.get_tensor("caption_embedding"), json.loads(f.metadata()["prompts"])


def test_rows_follow_the_prompts(gemma_dir, tmp_path):
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("photo of mountain lake\n\nthe lazy brown dog\n", encoding="utf-8")
    out = tmp_path / "emb.safetensors"
    res = invoke("a red fox", "", "--prompts-file", prompts_file, "--text-encoder", gemma_dir, "-o", out)
    assert res.exit_code == 0, res.output
    emb, prompts = read(out)
    assert prompts == ["a red fox", "", "photo of mountain lake", "the lazy brown dog"]  # blank line skipped
    assert emb.shape == (4, MAX_LENGTH, TINY_HIDDEN) and emb.dtype == torch.float32
    with CaptionEncoder.load(gemma_dir) as enc:
        for i, p in enumerate(prompts):
            assert torch.allclose(emb[i : i + 1], enc.encode(p), atol=1e-5, rtol=0)
    assert f"caption_embedding [4, {MAX_LENGTH}, {TINY_HIDDEN}]" in res.output


# slow: a pidtrt process loading the tiny Gemma (~5 s); the in-process encode-caption cases stay quick
@pytest.mark.slow
def test_text_encoder_from_env_and_subprocess(gemma_dir, tmp_path):
    """As a user runs it: the console entry point in a fresh interpreter, $PIDTRT_TEXT_ENCODER."""
    out = tmp_path / "emb.safetensors"
    env = dict(os.environ, **{TEXT_ENCODER_ENV: str(gemma_dir)})
    res = subprocess.run(
        [sys.executable, "-m", "pid_trt.cli.main", "encode-caption", "a red fox", "-o", str(out)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    emb, prompts = read(out)
    assert prompts == ["a red fox"] and emb.shape == (1, MAX_LENGTH, TINY_HIDDEN)


def one_line_error(res, code: int, *needles: str) -> None:
    assert res.exit_code == code, res.output
    assert res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
    assert "Traceback" not in res.output
    for n in needles:
        assert n in res.output, res.output


def test_bad_input(gemma_dir, tmp_path):
    out = tmp_path / "emb.safetensors"
    out.write_bytes(b"old content")  # must survive every failure below
    enc = ("--text-encoder", gemma_dir)
    one_line_error(invoke(*enc, "-o", out), 2, "no prompts")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    one_line_error(invoke("--prompts-file", empty, *enc, "-o", out), 2, "no prompts")
    one_line_error(invoke("a", "--prompts-file", tmp_path / "nope.txt", *enc, "-o", out), 2, "nope.txt")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    one_line_error(invoke("a", "--prompts-file", latin1, *enc, "-o", out), 2, "not UTF-8")
    one_line_error(
        invoke("a", "--text-encoder", tmp_path / "nowhere", "-o", out), 2, "nowhere", "hf download"
    )
    one_line_error(invoke("a", "-o", out), 2, TEXT_ENCODER_ENV)  # no --text-encoder, no env
    one_line_error(invoke("a", *enc, "--device", "tpu", "-o", out), 2, "tpu")
    one_line_error(invoke("a", *enc, "--text-dtype", "fp16", "-o", out), 2, "fp16")
    one_line_error(invoke("a", *enc, "-o", tmp_path / "no" / "emb.safetensors"), 2, "does not exist")
    one_line_error(invoke("a", *enc, "-o", tmp_path / "emb.png"), 2, ".safetensors")
    assert out.read_bytes() == b"old content"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert not (tmp_path / "emb.png").exists()
