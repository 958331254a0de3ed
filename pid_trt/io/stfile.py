"""Tensor reads from safetensors files whose header is untrusted (latents, noise).

The header is parsed and validated by :func:`pid_trt.safetensors_header.read_header_from`
(every declared shape, dtype and byte range is checked against the real file size before
any tensor byte is read, so a lying header cannot make us allocate or read more than the
file holds); this module reads the tensors it names, as float32, refusing non-finite values
and reads that would not fit in the free host memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import BinaryIO

import torch

from pid_trt.errors import InputFileError, PidTrtError
from pid_trt.input_files import reading
from pid_trt.quoting import quote, quote_names
from pid_trt.resources import available_memory, is_out_of_memory
from pid_trt.safetensors_header import SafetensorsHeader

#: safetensors dtype name -> torch dtype (None where this torch has none).
TORCH_DTYPES: Mapping[str, torch.dtype | None] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
    "F8_E5M2": getattr(torch, "float8_e5m2", None),
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": getattr(torch, "uint64", None),
    "U32": getattr(torch, "uint32", None),
    "U16": getattr(torch, "uint16", None),
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

#: The floating-point dtypes user tensors may carry (converted to float32 on load).
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def read_tensor(
    f: BinaryIO,
    header: SafetensorsHeader,
    name: str,
    what: str,
    error: type[PidTrtError] = InputFileError,
) -> torch.Tensor:
    """Read tensor ``name`` (validated by the header parser) in its stored dtype.

    Returns a fresh CPU tensor (not a view of a shared buffer). ``header``: from
    :func:`pid_trt.safetensors_header.read_header_from` on ``f``.
    """
    entry = header.tensors[name]
    torch_dtype = TORCH_DTYPES[entry.dtype]
    if torch_dtype is None:
        raise error(f"{what}: tensor {quote(name)} has dtype {entry.dtype}, which this torch cannot load")
    f.seek(header.data_offset + entry.start)
    buf = bytearray(entry.nbytes)
    if f.readinto(buf) != len(buf):
        raise error(f"{what}: truncated while reading tensor {quote(name)}")
    if entry.numel == 0:
        return torch.empty(entry.shape, dtype=torch_dtype)
    # safetensors stores little-endian, as are all hosts torch supports.
    return torch.frombuffer(buf, dtype=torch_dtype).reshape(entry.shape)


def open_input(
    path: str | os.PathLike[str], what: str, error: type[PidTrtError] = InputFileError
) -> BinaryIO:
    """Open ``path`` for binary reading, turning a missing / unreadable file into ``error``
    (:func:`pid_trt.input_files.reading`)."""
    with reading(what, "a safetensors file", error):
        return open(path, "rb")


def require_only_tensor(
    header: SafetensorsHeader,
    key: str,
    what: str,
    made_by: str = "",
    error: type[PidTrtError] = InputFileError,
) -> None:
    """Refuse a file holding anything but exactly one tensor, ``key`` (``made_by``: the command
    that writes such files, named in the message)."""
    names = list(header.tensors)
    if names != [key]:
        source = f" (from {made_by})" if made_by else ""
        raise error(f"{what}: has tensor(s) {quote_names(names)}; expected exactly one, {key!r}{source}")


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
    tensors = header.tensors
    for name in names:
        dtype = tensors[name].dtype
        if dtype not in FLOAT_DTYPES:
            raise error(
                f"{what}: tensor {quote(name)} has dtype {dtype}, expected a float tensor ({', '.join(FLOAT_DTYPES)})"
            )
    _check_fits(header, names, what, error)
    out = {}
    for name in names:
        try:
            t = read_tensor(f, header, name, what, error).to(torch.float32)
        except (MemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            raise error(f"{what}: out of memory reading tensor {quote(name)}") from None
        out[name] = check_finite(t, name, what, error)
    return out


def check_finite(
    t: torch.Tensor, name: str, what: str, error: type[PidTrtError] = InputFileError
) -> torch.Tensor:
    """``t`` unchanged when every value is finite; else ``error`` counting the NaN / Inf values."""
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise error(
            f"{what}: tensor {quote(name)} has {bad} NaN/Inf value(s) as float32, expected finite values"
        )
    return t


def _check_fits(header: SafetensorsHeader, names: list[str], what: str, error: type[PidTrtError]) -> None:
    """Refuse a read whose stored bytes + float32 copy exceed the free host memory."""
    tensors = header.tensors
    need = sum(tensors[n].nbytes + 4 * tensors[n].numel for n in names)
    free = available_memory("cpu")
    if free is not None and need > free.free_bytes:
        gib = float(1 << 30)
        raise error(
            f"{what}: reading {', '.join(names)} needs {need / gib:.1f} GiB but only "
            f"{free.free_bytes / gib:.1f} GiB is available ({free.source}); expected a latent-sized file"
        )
