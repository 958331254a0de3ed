"""`pidtrt decode` with --tiles / --tile-size / --tile-overlap / --tile-batch /
--allow-untrained-size / --dry-run, run as a user runs it (a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pid_trt.io import write_latent_file


def run_cli(*args: object) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pid_trt.cli.main", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture
def flux_4096(tmp_path: Path) -> tuple[Path, Path]:
    """A flux latent of 128x128 cells (4096x4096 px) with a caption, and a 'checkpoint' that is
    not one: reading it would fail, so a command that succeeds did not read it."""
    latent = tmp_path / "big.safetensors"
    write_latent_file(latent, torch.zeros(1, 16, 128, 128), torch.zeros(1, 300, 2304))
    junk = tmp_path / "model_ema_bf16.pth"
    junk.write_bytes(b"not a checkpoint")
    return latent, junk


def test_dry_run_prints_the_plan_and_reads_no_weights(flux_4096, tmp_path: Path) -> None:
    latent, junk = flux_4096
    out = tmp_path / "out.png"
    res = run_cli("decode", latent, "-o", out, "--backbone", "flux", "--ckpt-type", "2k", "--checkpoint", junk,
                  "--backend", "tensorrt", "--dry-run")  # fmt: skip
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert text.startswith("plan: flux-2k, 4096x4096, batch 1, bf16, 4 steps")
    assert "decision: tiled: 4096x4096 is outside the trained sizes" in text
    tiles = next(line for line in text.splitlines() if line.startswith("tiles: "))
    tile = tiles.split(", ")[1].removesuffix(" px")  # e.g. 2304x1728
    assert tile in {"2048x2048", "2304x1728", "1728x2304", "2688x1536", "1536x2688", "2688x1792", "1792x2688"}
    assert f"pidtrt build --backbone flux --ckpt-type 2k --checkpoint {junk} --size {tile} --batch 1" in text
    assert "FLOP / decode" in text and "H100 SXM floor" in text
    assert not out.exists()


@pytest.mark.slow  # a second --dry-run process; the quick tier keeps test_dry_run_prints_the_plan_and_reads_no_weights
def test_dry_run_one_shot_inside_the_envelope(tmp_path: Path) -> None:
    latent = tmp_path / "l.safetensors"
    write_latent_file(latent, torch.zeros(2, 16, 64, 64), torch.zeros(2, 300, 2304))
    res = run_cli("decode", latent, "-o", tmp_path / "o.png", "--backbone", "flux", "--random-weights",
                  "--backend", "tensorrt", "--dry-run", "--tile-batch", "2")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "decision: one shot: 2048x2048 is inside the trained sizes" in res.stdout
    assert "--random-weights --size 2048x2048 --batch 2 --precision bf16" in res.stdout


@pytest.mark.slow  # a CLI process; in process: tests/tiling/test_decode_tiles.py::test_tiles_off_outside_the_envelope_is_refused_before_memory_and_weights
def test_tiles_off_outside_the_envelope_is_refused_in_one_line(flux_4096, tmp_path: Path) -> None:
    """Before the memory check (the fp32 one-shot estimate is ~53 GiB: exit 3 had it run) and
    before the weights (the checkpoint is junk)."""
    latent, junk = flux_4096
    out = tmp_path / "out.png"
    res = run_cli("decode", latent, "-o", out, "--backbone", "flux", "--checkpoint", junk, "--tiles", "off")
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert lines[0].startswith(
        "error: 4096x4096 is outside the trained sizes of flux-2k (2048x2048, 2304x1728"
    )
    assert "--tiles auto" in lines[0] and "--allow-untrained-size" in lines[0]
    assert not list(tmp_path.glob("out*"))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["--tile-size", "100x128"],
            "--tile-size width 100 px is not on the latent grid: expected a multiple of 32",
        ),
        # the same CLI path again, a process each (tests/tiling/ checks each rule in process)
        *(
            pytest.param(args, words, marks=pytest.mark.slow)
            for args, words in [
                (["--tiles", "2x2", "--tile-size", "1024x1024"], "leaves a gap"),
                (["--tile-size", "2048x2048", "--tile-overlap", "2048"], "expected less than the tile"),
                (["--tile-size", "8192x2048"], "is larger than the 4096x4096 image"),
                (["--tiles", "3"], "expected auto, off or COLSxROWS"),
            ]
        ),
    ],
)
def test_bad_tile_options_are_one_line_errors(flux_4096, tmp_path: Path, args, words) -> None:
    latent, junk = flux_4096
    res = run_cli(
        "decode", latent, "-o", tmp_path / "o.png", "--backbone", "flux", "--checkpoint", junk, *args
    )
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], lines
    assert not list(tmp_path.glob("o*"))


@pytest.mark.slow  # three CLI decodes; in process: tests/tiling/test_decode_tiles.py
def test_one_by_one_tiles_write_the_one_shot_image(tmp_path: Path) -> None:
    latent = tmp_path / "l.safetensors"
    write_latent_file(latent, torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(0)))
    base = ["decode", latent, "--backbone", "tiny", "--random-weights", "--steps", "2"]
    one = run_cli(*base, "-o", tmp_path / "one.safetensors")
    tiled = run_cli(*base, "-o", tmp_path / "tiled.safetensors", "--tiles", "1x1")
    two = run_cli(*base, "-o", tmp_path / "two.safetensors", "--tiles", "2x1", "--tile-overlap", "64")
    for res in (one, tiled, two):
        assert res.returncode == 0, res.stderr
    a, b, c = (load_file(str(tmp_path / f"{n}.safetensors"))["image"] for n in ("one", "tiled", "two"))
    assert torch.equal(a, b)
    assert c.shape == a.shape and float((c - a).abs().max()) > 1e-2
