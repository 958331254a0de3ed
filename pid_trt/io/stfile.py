"""A defensive reader of the safetensors format (no pickle, no trust in the header).

The format: 8 bytes little-endian u64 ``N``, then ``N`` bytes of JSON header mapping tensor
names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the
byte after the header) plus an optional ``"__metadata__"`` string map, then the data.

Everything the header declares is checked against the real file size before any tensor
byte is read, so a lying header cannot make us allocate or read more than the file holds.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

import torch

from pid_trt.errors import InputFileError, PidTrtError
from pid_trt.resources import available_memory, is_out_of_memory

#: Largest JSON header accepted, in bytes (safetensors itself caps it at 100 MB).
MAX_HEADER_BYTES = 100_000_000

#: safetensors dtype name -> (bytes per element, torch dtype or None where torch has none).
DTYPES: Mapping[str, tuple[int, torch.dtype | None]] = {
    "F64": (8, torch.float64),
    "F32": (4, torch.float32),
    "F16": (2, torch.float16),
    "BF16": (2, torch.bfloat16),
    "F8_E4M3": (1, getattr(torch, "float8_e4m3fn", None)),
    "F8_E5M2": (1, getattr(torch, "float8_e5m2", None)),
    "I64": (8, torch.int64),
    "I32": (4, torch.int32),
    "I16": (2, torch.int16),
    "I8": (1, torch.int8),
    "U64": (8, getattr(torch, "uint64", None)),
    "U32": (4, getattr(torch, "uint32", None)),
    "U16": (2, getattr(torch, "uint16", None)),
    "U8": (1, torch.uint8),
    "BOOL": (1, torch.bool),
}

#: The floating-point dtypes user tensors may carry (converted to float32 on load).
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header declares it: dtype name, shape, byte range in the data area."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """The validated header of a safetensors file.

    ``tensors`` in header order; ``metadata`` the ``__metadata__`` string map (empty when
    absent); ``data_start`` the absolute file offset of the data area.
    """

    tensors: Mapping[str, TensorEntry]
    metadata: Mapping[str, str]
    data_start: int


def read_header(f: BinaryIO, what: str, error: type[PidTrtError] = InputFileError) -> SafetensorsHeader:
    """Parse and validate the header of the open binary file ``f``.

    ``what`` names the file in messages (e.g. ``"latent file x.safetensors"``); ``error`` is
    the exception class raised, with a one-line message, for anything malformed.
    """
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise error(
            f"{what}: {size} bytes is too short for a safetensors file (expected an 8-byte header length)"
        )
    f.seek(0)
    (n,) = struct.unpack("<Q", f.read(8))
    if n > MAX_HEADER_BYTES:
        raise error(
            f"{what}: not a safetensors file (declared header size {n} bytes, expected <= {MAX_HEADER_BYTES})"
        )
    if n > size - 8:
        raise error(
            f"{what}: truncated or not a safetensors file (header declares {n} bytes, "
            f"file has only {size - 8} after the length)"
        )
    raw = f.read(n)
    if len(raw) != n:
        raise error(f"{what}: truncated while reading the header ({len(raw)} of {n} bytes)")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise error(f"{what}: header names {str(exc)[:80]!r} twice (expected unique tensor names)") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise error(f"{what}: not a safetensors file (header is not valid UTF-8 JSON)") from None
    if not isinstance(header, dict):
        raise error(
            f"{what}: not a safetensors file (header is a JSON {type(header).__name__}, expected an object)"
        )

    data_size = size - 8 - n
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise error(f"{what}: __metadata__ must map strings to strings")
    tensors = {name: _entry(name, spec, data_size, what, error) for name, spec in header.items()}
    return SafetensorsHeader(tensors=tensors, metadata=dict(metadata), data_start=8 + n)


def _entry(name: str, spec: object, data_size: int, what: str, error: type[PidTrtError]) -> TensorEntry:
    if not isinstance(spec, dict):
        raise error(f"{what}: header entry {name!r} is not an object (expected dtype, shape, data_offsets)")
    dtype = spec.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise error(
            f"{what}: tensor {name!r} has unknown dtype {dtype!r} (expected one of {', '.join(DTYPES)})"
        )
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise error(f"{what}: tensor {name!r} has shape {shape!r} (expected a list of non-negative integers)")
    offsets = spec.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise error(f"{what}: tensor {name!r} has data_offsets {offsets!r} (expected [begin, end])")
    begin, end = offsets
    if begin > end or end > data_size:
        raise error(
            f"{what}: tensor {name!r} has data_offsets [{begin}, {end}] beyond the {data_size}-byte data area "
            "(file truncated or header corrupt)"
        )
    entry = TensorEntry(name, dtype, tuple(shape), begin, end)
    nbytes = entry.numel * DTYPES[dtype][0]
    if nbytes != end - begin:
        raise error(
            f"{what}: tensor {name!r} of shape {list(shape)} {dtype} needs {nbytes} bytes "
            f"but data_offsets give {end - begin}"
        )
    return entry


class _DuplicateKey(ValueError):
    """A JSON object repeats a key (which one wins would be up to the parser)."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_tensor(
    f: BinaryIO,
    header: SafetensorsHeader,
    name: str,
    what: str,
    error: type[PidTrtError] = InputFileError,
) -> torch.Tensor:
    """Read tensor ``name`` (already validated by :func:`read_header`) in its stored dtype.

    Returns a fresh CPU tensor (not a view of a shared buffer).
    """
    entry = header.tensors[name]
    torch_dtype = DTYPES[entry.dtype][1]
    if torch_dtype is None:
        raise error(f"{what}: tensor {name!r} has dtype {entry.dtype}, which this torch cannot load")
    f.seek(header.data_start + entry.begin)
    buf = bytearray(entry.end - entry.begin)
    if f.readinto(buf) != len(buf):
        raise error(f"{what}: truncated while reading tensor {name!r}")
    if entry.numel == 0:
        return torch.empty(entry.shape, dtype=torch_dtype)
    # safetensors stores little-endian, as are all hosts torch supports.
    return torch.frombuffer(buf, dtype=torch_dtype).reshape(entry.shape)


def open_input(
    path: str | os.PathLike[str], what: str, error: type[PidTrtError] = InputFileError
) -> BinaryIO:
    """Open ``path`` for binary reading, turning a missing / unreadable file into ``error``."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise error(f"{what}: file not found") from None
    except IsADirectoryError:
        raise error(f"{what}: is a directory, expected a safetensors file") from None
    except OSError as exc:
        raise error(f"{what}: cannot be opened ({exc.strerror or exc})") from None


def load_float_tensors(
    f: BinaryIO,
    header: SafetensorsHeader,
    names: list[str],
    what: str,
    error: type[PidTrtError] = InputFileError,
) -> dict[str, torch.Tensor]:
    """Read ``names`` as float32, refusing non-float dtypes (checked first) and NaN / Inf.

    Before any tensor byte is read, the memory the read takes (stored bytes + the float32
    copy) is compared with the free host memory: a header that truthfully declares a huge
    tensor (e.g. a sparse file of 1 TB) is refused instead of exhausting memory.
    """
    for name in names:
        dtype = header.tensors[name].dtype
        if dtype not in FLOAT_DTYPES:
            raise error(
                f"{what}: tensor {name!r} has dtype {dtype}, expected a float tensor ({', '.join(FLOAT_DTYPES)})"
            )
    _check_fits(header, names, what, error)
    out = {}
    for name in names:
        try:
            t = read_tensor(f, header, name, what, error).to(torch.float32)
        except (MemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            raise error(f"{what}: out of memory reading tensor {name!r}") from None
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise error(
                f"{what}: tensor {name!r} has {bad} NaN/Inf value(s) as float32, expected finite values"
            )
        out[name] = t
    return out


def _check_fits(header: SafetensorsHeader, names: list[str], what: str, error: type[PidTrtError]) -> None:
    """Refuse a read whose stored bytes + float32 copy exceed the free host memory."""
    need = sum(header.tensors[n].end - header.tensors[n].begin + 4 * header.tensors[n].numel for n in names)
    free = available_memory("cpu")
    if free is not None and need > free.free_bytes:
        gib = float(1 << 30)
        raise error(
            f"{what}: reading {', '.join(names)} needs {need / gib:.1f} GiB but only "
            f"{free.free_bytes / gib:.1f} GiB is available ({free.source}); expected a latent-sized file"
        )
