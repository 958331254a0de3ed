"""Hostile checkpoints: pickled code, safetensors headers that lie, fuzzed header bytes.

Every payload here is real (a control test shows it runs under a plain unpickler); the
loader must refuse it with :class:`CheckpointError` without running it, and must refuse a
lying header quickly without allocating what the header claims.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from pid_trt.checkpoints import expected_shapes, load_checkpoint
from pid_trt.config import TINY
from pid_trt.errors import CheckpointError, PidTrtError
from pid_trt.safetensors_header import MAX_HEADER_BYTES, parse_header, read_header
from tests.conftest import fuzz_examples
from tests.message_helpers import assert_printable_line


# --------------------------------------------------------------------------- pickled code
def _write_marker(path: str) -> str:
    Path(path).write_text("payload ran")
    return "pwned"


class _WritesMarker:
    """Unpickling this calls ``_write_marker(marker)``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_write_marker, (self.marker,))


class _ShellMarker:
    """Unpickling this runs ``touch marker`` through ``os.system``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _payloads(marker: Path) -> dict[str, object]:
    tensor = torch.zeros(2, dtype=torch.bfloat16)
    return {
        "function": {"net.a": tensor, "net.b": _WritesMarker(marker)},
        "os_system": {"net.a": tensor, "net.b": _ShellMarker(marker)},
        "top_level": _WritesMarker(marker),
    }


def _write(kind: str, obj: object, path: Path) -> Path:
    if kind == "zip":
        torch.save(obj, path)
    elif kind == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle stream named .pth
        path.write_bytes(pickle.dumps(obj))
    return path


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("payload", ["function", "os_system", "top_level"])
def test_pickled_code_is_refused_and_never_runs(tmp_path, fmt, payload):
    marker = tmp_path / "marker"
    path = _write(fmt, _payloads(marker)[payload], tmp_path / "model_ema_bf16.pth")
    with pytest.raises(CheckpointError, match="refused: .*contains pickled code/objects other than tensors"):
        load_checkpoint(path, TINY)
    assert not marker.exists()
    with pytest.raises(CheckpointError):  # with or without a config
        load_checkpoint(path, None)
    assert not marker.exists()


def test_bare_pickle_stream_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    path = _write("bare", _payloads(marker)["function"], tmp_path / "w.pth")
    with pytest.raises(CheckpointError):
        load_checkpoint(path, TINY)
    assert not marker.exists()


@pytest.mark.parametrize("payload", ["function", "os_system"])
def test_control_payload_is_live(tmp_path, payload):
    """Without weights_only the same file runs its payload, so the tests above can fail."""
    marker = tmp_path / "marker"
    path = _write("zip", _payloads(marker)[payload], tmp_path / "w.pth")
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_garbage_pth_is_a_checkpoint_error(tmp_path):
    for i, data in enumerate([b"", b"PK\x03\x04garbage", b"\x80\x02garbage", os.urandom(4096)]):
        path = tmp_path / f"g{i}.pth"
        path.write_bytes(data)
        with pytest.raises(CheckpointError):
            load_checkpoint(path, TINY)


# --------------------------------------------------------------------------- lying headers
def _raw(path: Path, header: bytes | dict, data: bytes = b"", length: int | None = None) -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def _f32(shape, start, end):
    return {"dtype": "F32", "shape": list(shape), "data_offsets": [start, end]}


_LIES: dict[str, tuple[bytes | dict, bytes, int | None, str]] = {
    # name: (header, data, declared header length or None, expected message fragment)
    "zero_header_length": (b"", b"", 0, "header length 0"),
    "absurd_header_length": (b"{}", b"", 2**63, "header length"),
    "header_just_over_cap": (b"{}", b"", MAX_HEADER_BYTES + 1, "header length"),
    "header_past_eof": (b"{}", b"", 10**6, "past the end"),
    "offset_past_eof": ({"w": _f32([2**38], 0, 2**40)}, b"\0" * 16, None, "data_offsets"),
    "huge_shape_small_span": ({"w": _f32([2**38], 0, 16)}, b"\0" * 16, None, "spans 16 bytes"),
    "size_mismatch": ({"w": _f32([4], 0, 8)}, b"\0" * 8, None, "expected 16"),
    "duplicate_names": (b'{"w":' + json.dumps(_f32([1], 0, 4)).encode() + b',"w":'
                        + json.dumps(_f32([1], 4, 8)).encode() + b"}", b"\0" * 8, None, "'w' twice"),
    "overlap": ({"a": _f32([2], 0, 8), "b": _f32([2], 4, 12)}, b"\0" * 12, None, "overlaps"),
    "gap": ({"a": _f32([1], 4, 8)}, b"\0" * 8, None, "gap"),
    "trailing_bytes": ({"a": _f32([1], 0, 4)}, b"\0" * 4096, None, "cover 4 of"),
    "start_after_end": ({"a": _f32([0], 8, 4)}, b"\0" * 8, None, "start <= end"),
    "negative_offset": ({"a": _f32([1], -4, 0)}, b"\0" * 4, None, "data_offsets"),
    "bool_in_shape": ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, None, "shape"),
    "unknown_dtype": ({"a": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, b"\0", None, "dtype"),
    "extra_field": ({"a": {**_f32([1], 0, 4), "x": 1}}, b"\0" * 4, None, "exactly the fields"),
    "not_an_object": (b"[1, 2, 3]", b"", None, "JSON list"),
    "not_json": (b"{not json", b"", None, "not valid JSON"),
    "not_utf8": (b'{"\xff\xfe": 1}', b"", None, "not UTF-8"),
    "deep_nesting": (b"[" * 200_000 + b"]" * 200_000, b"", None, "JSON"),
    "metadata_not_strings": ({"__metadata__": {"pid_net_config": {"a": 1}}}, b"", None, "__metadata__"),
    "integer_tensor": ({"w": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, None,
                       "floating"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(_LIES))
def test_lying_safetensors_header_refused_fast_without_allocation(tmp_path, name):
    header, data, length, fragment = _LIES[name]
    path = _raw(tmp_path / "w.safetensors", header, data, length)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path, TINY)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fragment in str(info.value)
    assert_printable_line(str(info.value))
    assert elapsed < 2.0
    assert peak < 64 * 2**20  # bytes; the lies claim up to 2**63


@pytest.mark.parametrize("size", [0, 1, 7])
def test_file_shorter_than_length_field_refused(tmp_path, size):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x01" * size)
    with pytest.raises(CheckpointError, match="too short"):
        load_checkpoint(path, TINY)


def test_header_parser_reads_at_most_the_header(tmp_path):
    """read_header on a file whose data section is large reads only 8 + N bytes."""
    path = tmp_path / "big.safetensors"
    save_file({"w": torch.zeros(4 * 2**20)}, str(path))  # 16 MiB of data
    tracemalloc.start()
    try:
        header = read_header(path, CheckpointError)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert header.names() == ["w"] and header.entries[0].nbytes == 16 * 2**20
    assert peak < 2**20


# --------------------------------------------------------------------------- fuzzing
def _mutate(data: bytes, edits: list[tuple[int, int]], header_len: int | None, cut: int | None) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    buf = bytearray(data)
    for pos, value in edits:  # edits land in the length field or the JSON header
        buf[pos % (8 + n)] = value
    if header_len is not None:
        buf[:8] = struct.pack("<Q", header_len)
    if cut is not None:
        buf = buf[: cut % (len(buf) + 1)]
    return bytes(buf)


_edits = st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), max_size=8)
_lengths = st.one_of(st.none(), st.integers(0, 2**64 - 1), st.integers(0, 4096))


@settings(
    max_examples=fuzz_examples(200),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(edits=_edits, header_len=_lengths, cut=st.one_of(st.none(), st.integers(0, 2**31)))
def test_fuzzed_header_bytes_load_or_checkpoint_error(
    tmp_path_factory, tiny_checkpoint_bytes, edits, header_len, cut
):
    path = tmp_path_factory.mktemp("f", numbered=True) / "w.safetensors"
    path.write_bytes(_mutate(tiny_checkpoint_bytes, edits, header_len, cut))
    try:
        loaded = load_checkpoint(path, None)
    except CheckpointError as exc:
        assert_printable_line(str(exc))
        return
    # Whatever loads passed the strict check (a mutated but valid config JSON may load too).
    assert {k: tuple(t.shape) for k, t in loaded.state_dict.items()} == expected_shapes(loaded.config)


@settings(max_examples=fuzz_examples(200))
@given(
    raw=st.one_of(st.binary(max_size=512), st.text(max_size=256).map(str.encode)), size=st.integers(0, 2**40)
)
def test_fuzzed_header_json_parses_or_raises_own_error(raw, size):
    def fail(msg):
        return PidTrtError(msg)

    try:
        parse_header(raw, size, fail)
    except PidTrtError as exc:
        assert_printable_line(str(exc))


def test_mutation_helper_really_mutates(tiny_checkpoint_bytes):
    """Guard against a fuzz test that never reaches the parser with bad bytes."""
    bad = _mutate(tiny_checkpoint_bytes, [(8, ord("["))], None, None)
    assert bad != tiny_checkpoint_bytes
    with pytest.raises(PidTrtError):
        parse_header(bad[8 : 8 + struct.unpack("<Q", bad[:8])[0]], len(bad), PidTrtError)
