"""Point 1: untrusted checkpoints and user files never run code or exhaust memory.

Already covered elsewhere (kept there, listed here so the proof is in one place):

- tests/test_security_checkpoints.py::test_pickled_code_is_refused_and_never_runs
  (zip and legacy .pth whose pickle calls a function / os.system: refused, marker absent),
  ::test_control_payload_is_live (the same payloads *do* run under a plain unpickler),
  ::test_bare_pickle_stream_is_refused_and_never_runs, ::test_garbage_pth_is_a_checkpoint_error;
- ::test_lying_safetensors_header_refused_fast_without_allocation (22 lies: absurd header
  length, offsets past the end, huge shape / small span, duplicate names, overlaps, gaps,
  deep JSON nesting ...; < 2 s and < 64 MiB traced each);
- tests/io/test_latent_file.py::test_header_length_of_2pow62_is_refused,
  ::test_data_offsets_past_the_data_area_are_refused, ::test_shape_larger_than_its_data_offsets_is_refused,
  ::test_data_offsets_of_2pow42_in_a_small_file_are_refused (the same for latent files).

Added here: a hard address-space cap (RLIMIT_AS: catches mmap and torch's allocator, which
tracemalloc does not see) around the 2**40-byte lies; *sparse* files that truthfully hold a
terabyte (valid headers, so only a size-aware reader survives them); duplicate names in
latent files; a malicious .pth through ``pidtrt decode`` end to end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pid_trt.checkpoints import expected_shapes, load_checkpoint
from pid_trt.config import TINY
from pid_trt.errors import CheckpointError, InputFileError
from pid_trt.io import read_latent_file, read_noise_file
from tests.reliability.conftest import address_space_limit, one_line, raw_safetensors

TB = 1 << 40
C = TINY.lq_latent_channels


def _f32(shape: list[int], start: int, end: int) -> dict:
    return {"dtype": "F32", "shape": shape, "data_offsets": [start, end]}


def _timed_refusal(fn, error: type[Exception]) -> tuple[str, float]:
    t0 = time.perf_counter()
    with address_space_limit(), pytest.raises(error) as info:
        fn()
    return one_line(info.value), time.perf_counter() - t0


@pytest.fixture(scope="module", autouse=True)
def _warm_imports():
    """Import lazily loaded modules once, outside the timed, address-capped blocks."""
    import pid_trt.model  # noqa: F401  (checkpoints import it on first use)

    load_checkpoint  # noqa: B018
    yield


def _sparse_tiny_checkpoint(path: Path, huge_key: str, huge_shape: list[int]) -> Path:
    """A safetensors checkpoint with every TINY key, contiguous offsets, one tensor huge."""
    header, pos = {}, 0
    for name, shape in expected_shapes(TINY).items():
        shape = huge_shape if name == huge_key else list(shape)
        n = 4 * int(torch.Size(shape).numel())
        header[f"net.{name}"] = _f32(shape, pos, pos + n)
        pos += n
    return raw_safetensors(path, header, total_data=pos)


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_header_declaring_2pow40_bytes_in_small_file(tmp_path):
    """A real TINY key declared as a 1 TiB tensor in a 64-byte file: refused fast, capped memory."""
    key = f"net.{next(iter(expected_shapes(TINY)))}"
    path = raw_safetensors(tmp_path / "w.safetensors", {key: _f32([TB // 4], 0, TB)}, b"\0" * 64)
    msg, seconds = _timed_refusal(lambda: load_checkpoint(path, TINY), CheckpointError)
    assert "data_offsets" in msg and str(TB) in msg
    assert seconds < 2.0


def test_sparse_terabyte_checkpoint_refused_before_reading_data(tmp_path):
    """The header is *true* (the file really is 1 TiB, sparse): the strict shape check refuses
    it before a single data byte is read or mapped."""
    name = next(iter(expected_shapes(TINY)))
    path = _sparse_tiny_checkpoint(tmp_path / "w.safetensors", name, [TB // 4])
    assert path.stat().st_size > TB and path.stat().st_blocks * 512 < 1 << 20  # sparse
    msg, seconds = _timed_refusal(lambda: load_checkpoint(path, TINY), CheckpointError)
    assert name in msg and "shape" in msg
    assert seconds < 2.0


def test_malicious_pth_through_cli_never_runs(tmp_path):
    """``pidtrt decode --checkpoint evil.pth``: exit 2, one error line, the payload never ran."""
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch '{marker}'",))

    evil = tmp_path / "model_ema_bf16.pth"
    torch.save({"net.x": torch.zeros(1), "net.y": Payload()}, evil)
    torch.load(evil, weights_only=False)  # control: the payload is live
    assert marker.exists()
    marker.unlink()

    from pid_trt.io import sample_latent, write_latent_file

    lat = sample_latent(TINY, 1, 64, 64)
    write_latent_file(tmp_path / "l.safetensors", lat.latent, lat.caption)
    cmd = [sys.executable, "-m", "pid_trt.cli.main", "decode", str(tmp_path / "l.safetensors"),
           "-o", str(tmp_path / "o.png"), "--backbone", "tiny", "--checkpoint", str(evil)]  # fmt: skip
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pickled" in errors[0], res.stderr
    assert not marker.exists() and not (tmp_path / "o.png").exists()


# --------------------------------------------------------------------------- latent / noise
def test_latent_header_declaring_2pow40_bytes_in_small_file(tmp_path):
    path = raw_safetensors(
        tmp_path / "l.safetensors", {"latent": _f32([1, C, 2**18, TB // 4 // C // 2**18], 0, TB)}, b"\0" * 64
    )
    msg, seconds = _timed_refusal(lambda: read_latent_file(path, TINY), InputFileError)
    assert "beyond" in msg and seconds < 2.0


@pytest.mark.parametrize("data_bytes", [TB, 1 << 36], ids=["1TiB", "64GiB"])
def test_sparse_huge_latent_file_refused_before_reading(tmp_path, data_bytes):
    """A true header over a sparse file: refused by the free-memory check, not by the OOM killer
    (before the fix a 16 GiB sparse latent got the process killed)."""
    h = 2**10
    shape = [1, C, h, data_bytes // 4 // C // h]
    path = raw_safetensors(
        tmp_path / "l.safetensors", {"latent": _f32(shape, 0, data_bytes)}, total_data=data_bytes
    )
    msg, seconds = _timed_refusal(lambda: read_latent_file(path, TINY), InputFileError)
    assert "needs" in msg and "available" in msg
    assert seconds < 2.0


def test_sparse_huge_noise_file_refused_before_reading(tmp_path):
    shape = [4, 1, 3, 2**16, 2**16]  # 4 x 3 x 64K x 64K float32 = 192 GiB
    n = 4 * 4 * 3 * 2**32
    path = raw_safetensors(tmp_path / "n.safetensors", {"noise": _f32(shape, 0, n)}, total_data=n)
    msg, seconds = _timed_refusal(lambda: read_noise_file(path, 4, 1, 2**16, 2**16), InputFileError)
    assert "needs" in msg and seconds < 2.0


def test_latent_duplicate_tensor_names_refused(tmp_path):
    """Two 'latent' entries: which one wins would be up to the JSON parser; refuse instead."""
    one = b'"latent": {"dtype": "F32", "shape": [1, %d, 1, 1], "data_offsets": [%d, %d]}'
    header = b"{" + one % (C, 0, 4 * C) + b", " + one % (C, 4 * C, 8 * C) + b"}"
    path = raw_safetensors(tmp_path / "l.safetensors", header, b"\0" * 8 * C)
    with pytest.raises(InputFileError) as info:
        read_latent_file(path, TINY)
    assert "'latent' twice" in one_line(info.value)
