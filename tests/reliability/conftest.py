"""Helpers of the reliability suite: a hard cap on address space, hand-made safetensors files."""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.message_helpers import assert_printable_line

#: Address space a guarded block may add on top of what the process already maps, in bytes.
#: Generous for thread stacks and malloc arenas; tiny next to the 2**40-byte lies tested.
DEFAULT_EXTRA_BYTES = 1 << 30


def _mapped_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def address_space_limit(extra_bytes: int = DEFAULT_EXTRA_BYTES) -> Iterator[None]:
    """Run the block with RLIMIT_AS = current mapping + ``extra_bytes`` (then restore it).

    Unlike tracemalloc this bounds every allocation (malloc, mmap, torch's allocator): a
    reader that tried to allocate or map what a lying file declares fails inside the block.
    """
    resource = pytest.importorskip("resource", reason="needs the POSIX resource module (a Linux machine)")
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc (Linux) to measure the mapped address space")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _mapped_bytes() + extra_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def raw_safetensors(
    path: Path, header: dict | bytes, data: bytes = b"", total_data: int | None = None
) -> Path:
    """Write a safetensors file by hand (the header may lie).

    ``total_data``: make the data section that many bytes long as a *sparse* file (no disk
    blocks, reads as zeros): a file that truthfully holds a terabyte-sized tensor.
    """
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)
        if total_data is not None:
            f.truncate(8 + len(blob) + total_data)
    return path


def one_line(exc: BaseException) -> str:
    """The exception's message, asserting it is one non-empty line with no control or other
    unprintable character (:func:`tests.message_helpers.assert_printable_line`)."""
    return assert_printable_line(str(exc))
