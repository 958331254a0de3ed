"""The pipelined image writer: same bytes as the serial write, bounded in flight, a failed file
fails alone, Ctrl-C leaves no partial file (a real subprocess, a real SIGINT)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pid_trt.atomic import TEMP_PREFIX
from pid_trt.bench.photo import photo_like
from pid_trt.errors import ConfigError, InputFileError
from pid_trt.io import OutputOptions, quantize, write_images
from pid_trt.io.writer import ImageWriter

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".safetensors"])
def test_pooled_writes_are_the_bytes_of_the_serial_write(tmp_path, suffix):
    img = photo_like(64, 80, seed=2, batch=3)
    serial = write_images(img, tmp_path / f"serial{suffix}")
    with ImageWriter(writers=3) as writer:
        pooled = writer.submit(img, tmp_path / f"pooled{suffix}").result()
    assert len(pooled) == len(serial) == (1 if suffix == ".safetensors" else 3)
    for a, b in zip(serial, pooled, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_pixels_quantized_beforehand_write_the_same_png(tmp_path):
    img = photo_like(40, 48, seed=4, batch=2)
    (a, _) = write_images(img, tmp_path / "a.png")
    with ImageWriter(writers=1) as writer:
        (b, _) = writer.submit(quantize(img), tmp_path / "b.png").result()
        with pytest.raises(ValueError, match="uint16"):
            writer.submit(quantize(img), tmp_path / "c.png", OutputOptions(bit_depth=16))
    assert a.read_bytes() == b.read_bytes()


def test_never_more_than_k_images_in_flight_and_submit_blocks(tmp_path, monkeypatch):
    import pid_trt.io.writer as writer_mod

    gate = threading.Event()
    running = []
    lock = threading.Lock()
    real = writer_mod.write_pixels

    def slow_write(*args, **kw):
        with lock:
            running.append(1)
        gate.wait(10)
        return real(*args, **kw)

    monkeypatch.setattr(writer_mod, "write_pixels", slow_write)
    img = photo_like(8, 8, batch=1)
    writer = ImageWriter(writers=2, max_in_flight=3)
    futures: list = []

    def submit_all():
        for i in range(7):
            futures.append(writer.submit(img, tmp_path / f"o{i}.png"))

    feeder = threading.Thread(target=submit_all)
    feeder.start()
    time.sleep(0.5)
    assert len(futures) == 3  # the fourth submit waits for room
    assert feeder.is_alive() and writer.peak == 3
    gate.set()
    feeder.join(10)
    writer.close()
    assert all(f.result() for f in futures) and len(futures) == 7
    assert writer.peak == 3 and len(running) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"o{i}.png" for i in range(7)]


def test_a_failed_file_fails_its_own_batch_alone_with_a_one_line_error(tmp_path):
    img = photo_like(16, 16, batch=1)
    (tmp_path / "blocked.png").mkdir()  # a folder where the file should go: the rename fails, even as root
    with ImageWriter(writers=2) as writer:
        ok1 = writer.submit(img, tmp_path / "a.png")
        bad = writer.submit(img, tmp_path / "blocked.png")
        ok2 = writer.submit(img, tmp_path / "b.png")
    assert ok1.result() == [tmp_path / "a.png"] and ok2.result() == [tmp_path / "b.png"]
    with pytest.raises(InputFileError) as info:
        bad.result()
    msg = str(info.value)
    assert "blocked.png: write failed" in msg and "\n" not in msg
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_bad_writer_settings_are_refused():
    with pytest.raises(ConfigError, match="--writers -1"):
        ImageWriter(writers=-1)
    with pytest.raises(ConfigError, match="max_in_flight 0"):
        ImageWriter(writers=1, max_in_flight=0)


# A shell that runs this suite in the background starts it with SIGINT ignored, and Python then
# keeps it ignored in the child: the child puts Ctrl-C's handler back itself.
_CHILD = """
import signal, sys, torch
signal.signal(signal.SIGINT, signal.default_int_handler)
from pid_trt.bench.photo import photo_like
from pid_trt.io.writer import ImageWriter
img = photo_like(1024, 1024, seed=1)
out = sys.argv[1]
with ImageWriter(writers=2) as w:
    i = 0
    while True:
        w.submit(img, f"{out}/img{i:04d}.png")
        if i == 3:
            print("writing", flush=True)
        i += 1
"""


def test_ctrl_c_waits_for_writes_in_flight_and_leaves_no_partial_file(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        assert child.stdout.readline().strip() == b"writing"
        time.sleep(0.3)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=300)  # generous: a loaded 2-core machine
    finally:
        child.kill()  # never left writing after a failure
        child.wait()
    assert child.returncode != 0 and b"KeyboardInterrupt" in err
    files = sorted(tmp_path.iterdir())
    assert files and not [p for p in files if p.name.startswith(TEMP_PREFIX)]
    from PIL import Image

    for p in files:  # every file there is whole: it decodes to the full image
        with Image.open(p) as im:
            im.load()
            assert im.size == (1024, 1024)
