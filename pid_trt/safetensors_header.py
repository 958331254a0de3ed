"""Safe, bounded parser of a safetensors file header (no tensor data is read).

A safetensors file is ``u64 little-endian N`` + ``N`` bytes of JSON + a data section.
The JSON maps tensor names to ``{"dtype", "shape", "data_offsets": [start, end]}`` (byte
offsets relative to the data section) plus an optional ``__metadata__`` str → str map.

:func:`read_header` validates all of it against the file's size *before* any library
maps or allocates tensor memory, so a header that lies (absurd length, offsets past the
end, sizes that do not match the shape, overlaps, duplicate names) is refused after
reading at most :data:`MAX_HEADER_BYTES` bytes. The one header parser of the project:
checkpoints (:mod:`pid_trt.checkpoints`) and the latent / noise readers
(:mod:`pid_trt.io.stfile`) use it; the error type and the file's label are parameters.
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pid_trt.errors import PidTrtError
from pid_trt.quoting import printable, quote

#: Largest JSON header accepted, in bytes (real checkpoints need ~60 KB).
MAX_HEADER_BYTES = 100 * 1024 * 1024

#: Bytes per element of each safetensors dtype this project can read.
DTYPE_BYTES: Mapping[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip

#: The floating-point dtypes among :data:`DTYPE_BYTES`.
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's header record; ``start``/``end`` are byte offsets into the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes (``end - start``)."""
        return self.end - self.start

    @property
    def numel(self) -> int:
        """Number of elements (product of ``shape``)."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: entries in file order, metadata, and where the data begins.

    ``data_offset`` is the absolute byte position of the data section (8 + JSON length);
    ``file_size`` the file's size in bytes when it was checked.
    """

    entries: tuple[TensorEntry, ...]
    metadata: Mapping[str, str]
    data_offset: int
    file_size: int

    def names(self) -> list[str]:
        """Tensor names in header order."""
        return [e.name for e in self.entries]

    @functools.cached_property
    def tensors(self) -> dict[str, TensorEntry]:
        """Entries by name, in header order (built once per header)."""
        return {e.name: e for e in self.entries}


def read_header(path: str | os.PathLike[str], error: type[Exception] = PidTrtError) -> SafetensorsHeader:
    """Read and validate the header of the safetensors file at ``path``.

    Raises ``error`` (e.g. :class:`~pid_trt.errors.CheckpointError`) with a one-line
    message naming what is wrong; never reads more than 8 + :data:`MAX_HEADER_BYTES` bytes.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return read_header_from(fh, f"safetensors file {printable(path.name)}", error)
    except OSError as exc:
        raise error(
            f"cannot read safetensors file {printable(path)}: {printable(exc.strerror or exc)}"
        ) from None


def read_header_from(f: BinaryIO, what: str, error: type[Exception] = PidTrtError) -> SafetensorsHeader:
    """Read and validate the header of the open binary file ``f`` (from its start).

    ``what`` names the file in messages (e.g. ``"latent file x.safetensors"``); ``error`` is
    raised with a one-line ``"{what}: ..."`` message for anything malformed.
    """

    def fail(message: str) -> Exception:
        return error(f"{what}: {message}")

    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    head = f.read(8)
    if len(head) < 8:
        raise fail(f"{size} bytes is too short: expected an 8-byte header length then a JSON header")
    (n,) = struct.unpack("<Q", head)
    if n < 2 or n > MAX_HEADER_BYTES:
        raise fail(f"not a safetensors file: header length {n} bytes, expected 2 to {MAX_HEADER_BYTES}")
    if 8 + n > size:
        raise fail(
            f"truncated or not a safetensors file: header length {n} bytes runs past the end of the {size}-byte file"
        )
    raw = f.read(n)
    if len(raw) != n:
        raise fail(f"truncated while reading the header: expected {n} header bytes, read {len(raw)}")
    return parse_header(raw, size, fail)


def parse_header(raw: bytes, file_size: int, fail: Any) -> SafetensorsHeader:
    """Validate the JSON header bytes ``raw`` of a file of ``file_size`` bytes.

    ``fail(message)`` must return the exception to raise.
    """
    data_offset = 8 + len(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise fail("header is not UTF-8 text: expected a JSON object") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise fail(f"header names {quote(str(exc))} twice: expected unique tensor names and fields") from None
    except (ValueError, RecursionError) as exc:
        raise fail(f"header is not valid JSON ({printable(exc, 80)}): expected a JSON object") from None
    if not isinstance(obj, dict):
        raise fail(f"header is a JSON {type(obj).__name__}: expected an object")

    metadata = obj.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise fail(f"__metadata__ is a JSON {type(metadata).__name__}: expected an object of string values")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise fail(
                f"__metadata__ {quote(key)} is a JSON {type(value).__name__}: expected an object of string values"
            )

    data_size = file_size - data_offset
    entries = [_entry(name, rec, data_size, fail) for name, rec in obj.items()]
    # The data section must be covered exactly: no overlaps, no gaps, no trailing bytes.
    pos = 0
    for e in sorted(entries, key=lambda e: (e.start, e.end)):
        if e.start != pos:
            kind = "overlaps another tensor" if e.start < pos else f"leaves a gap of {e.start - pos} bytes"
            raise fail(f"tensor {quote(e.name)} at data offset {e.start} {kind}: expected offset {pos}")
        pos = e.end
    if pos != data_size:
        raise fail(f"tensors cover {pos} of the {data_size} data bytes: expected the whole data section")
    return SafetensorsHeader(tuple(entries), dict(metadata), data_offset, file_size)


def _entry(name: str, rec: Any, data_size: int, fail: Any) -> TensorEntry:
    label = f"tensor {quote(name)}"
    if not isinstance(rec, dict):
        raise fail(f"{label} is not an object: expected exactly the fields dtype, shape, data_offsets")
    if set(rec) - {"dtype", "shape", "data_offsets"} or len(rec) != 3:
        raise fail(f"{label}: expected exactly the fields dtype, shape, data_offsets")
    dtype, shape, offsets = rec["dtype"], rec["shape"], rec["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise fail(f"{label} has unknown dtype {quote(dtype, 40)}: expected one of {', '.join(DTYPE_BYTES)}")
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape) or len(shape) > 16:
        raise fail(f"{label} has shape {quote(shape, 40)}: expected at most 16 non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_uint(o) for o in offsets):
        raise fail(
            f"{label} has data_offsets {quote(offsets, 40)}: expected [start, end], non-negative integers"
        )
    start, end = offsets
    if start > end or end > data_size:
        raise fail(
            f"{label} has data_offsets [{start}, {end}] beyond the {data_size}-byte data area: expected "
            f"start <= end <= {data_size} (file truncated or header corrupt)"
        )
    want = math.prod(shape) * DTYPE_BYTES[dtype]
    if end - start != want:
        raise fail(
            f"{label} ({dtype} {shape}) spans {end - start} bytes: expected {want} "
            f"(the shape needs {want}, data_offsets give {end - start})"
        )
    return TensorEntry(name, dtype, tuple(shape), start, end)


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out
