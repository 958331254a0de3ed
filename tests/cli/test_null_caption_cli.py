"""Captions without a prompt, as a user runs them: `pidtrt encode-caption --null`, `pidtrt decode`
without caption (--null-caption FILE, $PIDTRT_NULL_CAPTION, the caption store, --text-encoder),
the community null-caption format, and the persistent store across real processes.

The net that needs a caption is the tiny net from a checkpoint file (not random weights), with
the tiny Gemma-2's width (32); every test has its own caption store (tests/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pid_trt.config import TINY
from pid_trt.io import sample_latent, write_latent_file
from tests.text_helpers import make_tiny_gemma


def _cli(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pid_trt.cli.main", *map(str, args)]
    base = {k: v for k, v in os.environ.items() if k not in ("PIDTRT_TEXT_ENCODER", "PIDTRT_NULL_CAPTION")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**base, **(env or {})})


@pytest.fixture(scope="module")
def gemma(tmp_path_factory) -> Path:
    return make_tiny_gemma(tmp_path_factory.mktemp("gemma"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The tiny net's weights as a checkpoint file: a net that needs a caption."""
    from pid_trt.model import PidNet, random_init

    model = random_init(PidNet(TINY), seed=4)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"pid_net_config": TINY.to_json()})  # fmt: skip
    return path


@pytest.fixture(scope="module")
def latent(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lat") / "latent.safetensors"
    write_latent_file(path, sample_latent(TINY, 1, 64, 64, seed=2).latent)  # no caption inside
    return path


def _decode(latent: Path, out: Path, checkpoint: Path, *more: object, env: dict | None = None):
    return _cli(
        "decode", latent, "-o", out, "--checkpoint", checkpoint, "--seed", 3, "--threads", 1, *more, env=env
    )


def _image(path: Path) -> torch.Tensor:
    return load_file(str(path))["image"]


def _errors(res: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("warning:")]


@pytest.mark.slow  # five CLI processes with a tiny Gemma (~35 s); the quick tier keeps the null caption's CLI paths below and tests/test_text.py's recipe in process
def test_null_caption_equals_encoding_empty(
    gemma: Path, checkpoint: Path, latent: Path, tmp_path: Path
) -> None:
    """`encode-caption --null` = the recipe on "" spelled out by hand (tests/test_text.py's
    by_hand, transformers directly); a decode without caption and --text-encoder encodes it
    (caption: null (encoded)) and equals --null-caption FILE and $PIDTRT_NULL_CAPTION."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.test_text import by_hand

    by_encoder, by_file, by_env = (tmp_path / f"{n}.safetensors" for n in ("enc", "file", "env"))
    res = _decode(latent, by_encoder, checkpoint, "--text-encoder", gemma)
    assert res.returncode == 0 and "caption: null (encoded)" in res.stdout, res.stderr
    null = tmp_path / "null.safetensors"
    res = _cli(
        "encode-caption", "--null", "--text-encoder", gemma, "-o", null, env={"PIDTRT_CAPTION_STORE": "off"}
    )
    assert res.returncode == 0 and "the null caption; encoded" in res.stdout, res.stderr
    tok = AutoTokenizer.from_pretrained(gemma)
    model = AutoModelForCausalLM.from_pretrained(gemma, attn_implementation="eager").eval().model
    got = load_file(str(null))["caption_embedding"]
    assert got.shape == (1, 300, 32)
    torch.testing.assert_close(got, by_hand(tok, model, ""), rtol=0, atol=1e-5)

    res = _decode(latent, by_file, checkpoint, "--null-caption", null)
    assert res.returncode == 0 and f"caption: null ({null})" in res.stdout, res.stderr
    res = _decode(latent, by_env, checkpoint, env={"PIDTRT_NULL_CAPTION": str(null)})
    assert res.returncode == 0 and f"caption: null ({null})" in res.stdout, res.stderr
    assert torch.equal(_image(by_encoder), _image(by_file)) and torch.equal(_image(by_file), _image(by_env))
    # the caption matters: a prompt's caption gives another image
    other = tmp_path / "other.safetensors"
    assert (
        _decode(latent, other, checkpoint, "--text-encoder", gemma, "--prompt", "a red fox").returncode == 0
    )
    assert not torch.equal(_image(other), _image(by_file))


@pytest.mark.slow  # five CLI decodes (~30 s); in process: test_decoder_null_caption_path_tensor_and_no_store below
def test_community_format_gives_the_same_image(checkpoint: Path, latent: Path, tmp_path: Path) -> None:
    """`null_caption_embs` [1, 300, 32] bf16 decodes exactly as the same values in ours
    (`caption_embedding` float32); a null caption of the wrong width is one line, nothing written."""
    values = (torch.randn(1, 300, 32, generator=torch.Generator().manual_seed(5))).to(torch.bfloat16)
    community, ours = tmp_path / "community.safetensors", tmp_path / "ours.safetensors"
    save_file({"null_caption_embs": values}, str(community))
    save_file({"caption_embedding": values.float()}, str(ours))
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert _decode(latent, a, checkpoint, "--null-caption", community).returncode == 0
    assert _decode(latent, b, checkpoint, "--null-caption", ours).returncode == 0
    assert torch.equal(_image(a), _image(b))
    zeros = tmp_path / "zeros.safetensors"
    save_file({"null_caption_embs": torch.zeros(1, 300, 32, dtype=torch.bfloat16)}, str(zeros))
    z = tmp_path / "z.safetensors"
    assert _decode(latent, z, checkpoint, "--null-caption", zeros).returncode == 0
    assert not torch.equal(_image(z), _image(a))  # the values are used
    many = tmp_path / "many"  # a folder run says it in its summary, and decodes the same
    res = _cli("decode", latent.parent, "-o", f"{many}/{{stem}}.safetensors", "--checkpoint", checkpoint,
               "--seed", 3, "--threads", 1, "--null-caption", community)  # fmt: skip
    assert res.returncode == 0 and f"caption: null ({community})" in res.stdout, res.stdout + res.stderr
    assert torch.equal(_image(many / "latent.safetensors"), _image(a))

    wide = tmp_path / "wide.safetensors"
    save_file({"null_caption_embs": torch.zeros(1, 300, 2304, dtype=torch.bfloat16)}, str(wide))
    out = tmp_path / "never.png"
    res = _decode(latent, out, checkpoint, "--null-caption", wide)
    assert res.returncode == 2 and len(_errors(res)) == 1, res.stderr
    assert "width 2304, expected 32" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


# slow: two pidtrt processes (~5 s); the same refusal is checked in process by the Decoder test below
@pytest.mark.slow
def test_no_caption_no_null_no_encoder_is_one_line(checkpoint: Path, latent: Path, tmp_path: Path) -> None:
    """One file and a folder of files: one error line naming both ways out, nothing written."""
    out = tmp_path / "out.png"
    res = _decode(latent, out, checkpoint)
    assert res.returncode == 2, res.stderr
    lines = _errors(res)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "--null-caption FILE" in lines[0] and "--text-encoder DIR" in lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []
    many = tmp_path / "many"
    res = _cli("decode", latent.parent, "-o", f"{many}/", "--checkpoint", checkpoint, "--threads", 1)
    assert res.returncode != 0 and "--null-caption FILE" in res.stdout + res.stderr
    assert not many.exists() or not any(many.iterdir())


def _blocked_transformers(tmp_path: Path) -> dict:
    """An environment in which `import transformers` fails: a process that loads the caption
    encoder dies with pid-trt's "needs transformers" error."""
    block = tmp_path / "block"
    (block / "transformers").mkdir(parents=True)
    (block / "transformers" / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    return {"PYTHONPATH": os.pathsep.join([str(block), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow  # six CLI decodes with a tiny Gemma (~35 s); in process: tests/test_caption_store.py::test_provider_reads_the_store_before_the_encoder
def test_second_process_finds_the_store_without_the_encoder(
    gemma: Path, checkpoint: Path, latent: Path, tmp_path: Path
) -> None:
    """Process 1 encodes a prompt and the null caption; processes 2-4 cannot import transformers
    (so cannot load the encoder), yet decode the same prompt and the null caption, bit for bit
    the same images, from the store. A prompt not in the store shows the block works."""
    first_p, first_n = tmp_path / "p1.safetensors", tmp_path / "n1.safetensors"
    assert (
        _decode(latent, first_p, checkpoint, "--text-encoder", gemma, "--prompt", "a red fox").returncode == 0
    )
    assert _decode(latent, first_n, checkpoint, "--text-encoder", gemma).returncode == 0
    blocked = _blocked_transformers(tmp_path)

    again_p, again_n = tmp_path / "p2.safetensors", tmp_path / "n2.safetensors"
    res = _decode(latent, again_p, checkpoint, "--text-encoder", gemma, "--prompt", "a red fox", env=blocked)
    assert res.returncode == 0 and "caption: prompt" in res.stdout, res.stderr
    res = _decode(latent, again_n, checkpoint, "--text-encoder", gemma, env=blocked)
    assert res.returncode == 0 and "caption: null (stored)" in res.stdout, res.stderr
    assert torch.equal(_image(first_p), _image(again_p)) and torch.equal(_image(first_n), _image(again_n))
    # no encoder named at all: the stored null caption of the net's width
    bare = tmp_path / "n3.safetensors"
    res = _decode(latent, bare, checkpoint, env=blocked)
    assert res.returncode == 0 and "caption: null (stored)" in res.stdout, res.stderr
    assert torch.equal(_image(bare), _image(first_n))
    # the control: a prompt the store does not hold needs the encoder, which cannot load here
    res = _decode(latent, tmp_path / "x.png", checkpoint, "--text-encoder", gemma, "--prompt", "blue house",
                  env=blocked)  # fmt: skip
    assert res.returncode == 3 and "needs transformers" in res.stderr, res.stderr


def test_decoder_null_caption_path_tensor_and_no_store(checkpoint: Path, tmp_path: Path) -> None:
    """Decoder.load(null_caption=...) takes a path or a tensor (same image); with the store off
    and nothing else, decode raises the one-line error."""
    from pid_trt import Decoder
    from pid_trt.errors import InputFileError

    values = torch.randn(300, 32, generator=torch.Generator().manual_seed(9))
    path = tmp_path / "null.safetensors"
    save_file({"caption_embedding": values[None]}, str(path))
    lat = sample_latent(TINY, 2, 64, 64, seed=1).latent
    with Decoder.load(checkpoint=checkpoint, null_caption=path, caption_store=False) as dec:
        by_path = dec.decode(lat, seed=1)
        assert dec.choose_caption(2).source == f"null ({path})"
    with Decoder.load(checkpoint=checkpoint, null_caption=values, caption_store=False) as dec:
        by_tensor = dec.decode(lat, seed=1)
    with Decoder.load(checkpoint=checkpoint, caption_store=False) as dec:
        explicit = dec.decode(lat, values, seed=1)
        with pytest.raises(InputFileError, match="--null-caption FILE"):
            dec.decode(lat, seed=1)
    assert torch.equal(by_path, by_tensor) and torch.equal(by_path, explicit)
