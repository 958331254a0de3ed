"""Hostile text through the real CLI: `pidtrt decode` on a noise file and a latent file whose
headers carry terminal escapes, `pidtrt encode-image` with a manifest naming a hostile missing
image. Each refusal is one printable line naming the field, the exit code is the usual one,
and nothing is written. Also the CLI's own printer, the last defence for a message that was
not quoted where it was made."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pid_trt.cli.errors import EXIT_USAGE, one_line, safe_line
from pid_trt.config import TINY
from pid_trt.errors import PidTrtError
from pid_trt.io import write_latent_file
from tests.message_helpers import assert_printable_line

#: ESC sequences (clear the screen, red, set the window title), CR, BEL, U+202E, NUL.
HOSTILE = "\x1b[2J\x1b[31mgone\x1b]0;pwned\x07\rfake ok\u202etxt.exe\x00"
#: How a message must show it (written by hand).
SHOWN = "\\x1b[2J\\x1b[31mgone\\x1b]0;pwned\\x07\\rfake ok\\u202etxt.exe\\x00"


def run_cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """The command in a fresh interpreter, its output as bytes decoded without loss."""
    cmd = [sys.executable, "-m", "pid_trt.cli.main", *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, cwd=cwd, timeout=600)
    res.stdout, res.stderr = (b.decode("utf-8", "surrogateescape") for b in (res.stdout, res.stderr))
    return res


def raw_file(path: Path, header: dict, data: bytes) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


@pytest.fixture(scope="module")
def latent(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("latent") / "lat.safetensors"
    gen = torch.Generator().manual_seed(0)
    write_latent_file(
        path,
        torch.randn(1, TINY.lq_latent_channels, 2, 2, generator=gen),
        torch.randn(1, TINY.txt_max_length, TINY.txt_embed_dim, generator=gen),
        torch.tensor([0.1]),
        backbone="tiny",
    )
    return path


def _refused_in_one_line(res: subprocess.CompletedProcess, *words: str) -> str:
    assert res.returncode == EXIT_USAGE, (res.returncode, res.stderr)
    lines = res.stderr.strip("\n").split("\n")
    assert len(lines) == 1, res.stderr
    return assert_printable_line(lines[0], names=("error: ", *words))


@pytest.mark.parametrize("field", ["shape", "data_offsets", "dtype"])
@pytest.mark.slow  # a CLI process per field; tests/reliability/test_hostile_text.py checks every reader's escaping in process
def test_decode_refuses_a_hostile_noise_file(latent: Path, tmp_path: Path, field: str) -> None:
    entry = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], field: HOSTILE}
    noise = raw_file(tmp_path / "noise.safetensors", {"noise": entry}, b"\0" * 4)
    out = tmp_path / "out.png"
    res = run_cli(
        "decode", latent, "--backbone", "tiny", "--random-weights", "--noise", noise, "-o", out, "--threads", "1",
        cwd=tmp_path,
    )  # fmt: skip
    _refused_in_one_line(res, field, SHOWN[:40])
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["noise.safetensors"]


def test_decode_refuses_a_latent_file_with_a_hostile_tensor_name(tmp_path: Path) -> None:
    bad = raw_file(tmp_path / "bad.safetensors", {"latent" + HOSTILE: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)  # fmt: skip
    res = run_cli(
        "decode",
        bad,
        "--backbone",
        "tiny",
        "--random-weights",
        "-o",
        "out.png",
        "--threads",
        "1",
        cwd=tmp_path,
    )
    _refused_in_one_line(res, "unknown tensor(s)", SHOWN)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


@pytest.mark.slow  # a CLI process loading an image encoder; tests/reliability/test_hostile_text.py checks the manifest reader in process
def test_encode_image_manifest_naming_a_hostile_missing_image(tmp_path: Path) -> None:
    """The failure is reported as it happens (above the progress bar) and in the summary,
    both one printable line naming the image; the run's exit code is the input's."""
    from tests.integrations import diffusers_helpers as helpers

    vae = tmp_path / "vae"
    helpers.flux_vae().save_pretrained(vae)
    name = "no_such_" + HOSTILE.replace("\x00", "") + ".png"  # a path holds no NUL
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": name}) + "\n")
    res = run_cli(
        "encode-image",
        "--manifest",
        "m.jsonl",
        "--vae",
        vae,
        "--backbone",
        "flux",
        "-o",
        "out/",
        cwd=tmp_path,
    )
    assert res.returncode == EXIT_USAGE, res.stderr
    shown = "no_such_" + SHOWN.replace("\\x00", "") + ".png"
    errors = [line for line in res.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1, res.stderr
    assert_printable_line(errors[0][errors[0].index("error: ") :], names=(shown, "file not found"))
    failed = [line for line in res.stdout.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1, res.stdout
    assert_printable_line(failed[0], names=(shown, "file not found"))
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def test_the_clis_printer_escapes_what_was_not_quoted() -> None:
    """The last defence: a message built without the quoting rule still prints as one
    printable line (white space runs joined, everything else escaped), capped."""
    assert one_line(PidTrtError("bad \x1b[2J value\r\nnext")) == "bad \\x1b[2J value next"
    assert one_line(FileNotFoundError(2, "No such file or directory", "a\x1b]0;t\x07.png")) == (
        "No such file or directory (a\\x1b]0;t\\x07.png)"
    )
    assert safe_line("x\u202ey") == "x\\u202ey"
    assert_printable_line(safe_line("n" * 10_000), cap=2100, names=("… (10000 characters)",))
