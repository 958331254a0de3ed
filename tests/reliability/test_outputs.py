"""Point 5: outputs. An existing output is never replaced by a partial result; a batch whose
write fails half-way keeps (and still writes) every image it can and names the ones that failed.

Already covered in tests/io/test_images.py (kept there): ::test_png_write_failure_keeps_existing_file,
::test_safetensors_write_failure_keeps_existing_file, ::test_png_batch_failure_names_the_image_and_keeps_the_others
(image 1 of 3 fails: 0 and 2 written, the old file 1 untouched, no temp files),
tests/test_atomic.py::test_atomic_write_failure_keeps_the_old_file_and_removes_the_temp,
::test_atomic_write_rename_failure_keeps_the_old_file,
tests/io/test_latent_file.py::test_failed_latent_write_keeps_the_old_file; in tests/cli/test_decode_cli.py:
::test_decode_cli_keeps_existing_output_on_failure.

Added here, with real faults only: writers SIGKILLed at random moments (the target is always
the old file or a complete PNG), and a batch decode through ``pidtrt decode`` whose second
output cannot be written.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pid_trt.atomic import TEMP_PREFIX, atomic_write
from pid_trt.config import TINY
from pid_trt.io import sample_latent, to_uint8, write_images, write_latent_file

KILLS = 12


def _writer(target: str, pixels: np.ndarray, started) -> None:
    """Child: replace ``target`` with a fresh 512x512 PNG again and again until killed.

    Exactly what :func:`write_images` does per file (atomic_write + PIL); the pixels come
    from the parent because torch must not run in a child forked from a threaded parent.
    """
    started.set()
    while True:
        with atomic_write(target) as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")


def _complete_png(path: Path) -> bool:
    with Image.open(path) as im:
        im.load()  # decodes every byte: a truncated file raises
        return im.size == (512, 512)


# slow: many killed writer processes (~14 s); tests/io/test_writer.py's Ctrl-C case stays quick
@pytest.mark.slow
def test_writer_killed_at_random_moments_never_leaves_a_partial_output(tmp_path):
    target = tmp_path / "out.png"
    old = np.zeros((8, 8, 3), dtype=np.uint8)
    Image.fromarray(old).save(target)
    rng = random.Random(0)
    pixels = to_uint8(torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 2 - 1)[
        0
    ].numpy()
    ctx = multiprocessing.get_context("fork")
    outcomes = {"old": 0, "new": 0}
    for i in range(KILLS):
        started = ctx.Event()
        child = ctx.Process(target=_writer, args=(str(target), pixels, started), daemon=True)
        child.start()
        assert started.wait(30)
        time.sleep(4.0 if i == KILLS - 1 else rng.uniform(0.0, 1.5))  # the last one surely after a write
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=10)
        with Image.open(target) as im:
            if im.size == (8, 8):
                outcomes["old"] += 1
            else:
                assert _complete_png(target)
                outcomes["new"] += 1
        # A killed writer can leave its temp file (never the target): the next writer or
        # `pidtrt engines rm all` style cleanup removes such scratch; it is never read.
        for scratch in tmp_path.glob(f"{TEMP_PREFIX}*"):
            scratch.unlink()
    assert outcomes["new"] >= 1  # the kills did land after complete writes too


def test_cli_batch_with_an_unwritable_output_keeps_the_others(tmp_path):
    lat = sample_latent(TINY, 3, 64, 64)
    write_latent_file(tmp_path / "l.safetensors", lat.latent, lat.caption)
    (tmp_path / "out_1.png").mkdir()  # a real fault: the rename onto it fails, even as root
    cmd = [sys.executable, "-m", "pid_trt.cli.main", "decode", str(tmp_path / "l.safetensors"),
           "-o", str(tmp_path / "out.png"), "--backbone", "tiny", "--random-weights", "--steps", "1"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr
    assert "1 of 3 images not written: image 1" in errors[0] and "out_1.png" in errors[0]
    assert "written: out_0.png, out_2.png" in errors[0]
    for k in (0, 2):
        with Image.open(tmp_path / f"out_{k}.png") as im:
            im.load()
            assert im.size == (64, 64)
    assert (tmp_path / "out_1.png").is_dir()
    assert not list(tmp_path.glob(f"{TEMP_PREFIX}*"))


@pytest.mark.parametrize("suffix", [".png", ".safetensors"])
def test_existing_output_survives_a_failed_write(tmp_path, suffix):
    """A real failure (the target's folder vanished mid-way is not portable; a NaN image is
    refused before any byte is written) leaves the old output byte for byte."""
    target = tmp_path / f"out{suffix}"
    target.write_bytes(b"precious")
    with pytest.raises(Exception, match="NaN"):
        write_images(torch.full((1, 3, 4, 4), float("nan")), target)
    assert target.read_bytes() == b"precious" and not list(tmp_path.glob(f"{TEMP_PREFIX}*"))
