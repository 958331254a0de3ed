"""``pidtrt decode DIR`` with writer threads: the same bytes as ``--writers 0``; a file that
cannot be written fails its own input alone; formats and options by suffix and flag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.jobs.helpers import write_tiny_latents

TINY_ARGS = ("--backbone", "tiny", "--random-weights", "--threads", "1")


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pid_trt.cli.main", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600)


def test_pipelined_run_writes_the_bytes_of_the_serial_run_and_a_blocked_file_fails_alone(tmp_path):
    lat = write_tiny_latents(tmp_path / "lat", 4, 4, seed=0)
    serial = _cli("decode", lat, "-o", "serial/", "--writers", "0", *TINY_ARGS, cwd=tmp_path)
    assert serial.returncode == 0, serial.stderr
    (tmp_path / "piped").mkdir()
    names = sorted(p.name for p in (tmp_path / "serial").iterdir())
    assert len(names) == 4
    (tmp_path / "piped" / names[1]).mkdir()  # a folder where one image should go: its write fails
    piped = _cli("decode", lat, "-o", "piped/", "--writers", "3", *TINY_ARGS, cwd=tmp_path)
    assert piped.returncode != 0
    errors = [line for line in piped.stderr.splitlines() if names[1] in line and "write failed" in line]
    assert len(errors) == 1, piped.stderr
    assert "Traceback" not in piped.stderr
    assert "failed 1 of 4" in piped.stdout
    for name in names[:1] + names[2:]:
        assert (tmp_path / "piped" / name).read_bytes() == (tmp_path / "serial" / name).read_bytes()
    assert (tmp_path / "piped" / names[1]).is_dir()


@pytest.mark.slow  # a CLI decode process; the encoders are tested in process in tests/io/test_encoders.py
def test_one_file_to_jpeg_and_16_bit_png_by_flag(tmp_path):
    lat = write_tiny_latents(tmp_path / "lat", 1, 4, seed=1)
    (src,) = sorted(lat.iterdir())
    jpg = _cli("decode", src, "-o", "o.jpg", "--quality", "90", *TINY_ARGS, cwd=tmp_path)
    png16 = _cli("decode", src, "-o", "o16.png", "--bit-depth", "16", *TINY_ARGS, cwd=tmp_path)
    png8 = _cli("decode", src, "-o", "o8.png", "--writers", "0", *TINY_ARGS, cwd=tmp_path)
    assert jpg.returncode == png16.returncode == png8.returncode == 0, jpg.stderr + png16.stderr
    with Image.open(tmp_path / "o.jpg") as j, Image.open(tmp_path / "o8.png") as p:
        assert j.format == "JPEG" and j.size == p.size
        assert np.abs(np.asarray(j, np.int16) - np.asarray(p, np.int16)).mean() < 8
    head = (tmp_path / "o16.png").read_bytes()[:32]
    assert head[24] == 16  # IHDR bit depth
    bad = _cli("decode", src, "-o", "o.jpg", "--bit-depth", "16", *TINY_ARGS, cwd=tmp_path)
    assert bad.returncode != 0 and "--bit-depth 16 is for .png" in bad.stderr
    assert len(bad.stderr.strip().splitlines()[-1]) > 0 and "Traceback" not in bad.stderr


@pytest.mark.slow  # two CLI decode processes; the quick tier keeps the pipelined run above
def test_batched_files_equal_single_ones_within_the_batch_tolerance(tmp_path):
    lat = write_tiny_latents(tmp_path / "lat", 5, 4, seed=2)
    one = _cli("decode", lat, "-o", "one/", "--batch", "1", *TINY_ARGS, cwd=tmp_path)
    three = _cli("decode", lat, "-o", "three/", "--batch", "3", "--writers", "2", *TINY_ARGS, cwd=tmp_path)
    assert one.returncode == 0 and three.returncode == 0, one.stderr + three.stderr
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "three").iterdir()) and len(names) == 5
    for name in names:
        with Image.open(tmp_path / "one" / name) as a, Image.open(tmp_path / "three" / name) as b:
            pa, pb = np.asarray(a, np.int16), np.asarray(b, np.int16)
        # the same noise and caption per file: only batched float arithmetic differs (torch CPU)
        assert np.abs(pa - pb).max() <= 1 and (pa == pb).mean() > 0.99
    refused = _cli("decode", lat, "-o", "x/", "--batch", "2", "--prompt", "a cat", *TINY_ARGS, cwd=tmp_path)
    assert refused.returncode != 0 and "--batch takes neither" in refused.stderr
