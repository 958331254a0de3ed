"""Opening a user's input file: every way it can fail (missing, a folder, unreadable, not
UTF-8) becomes one line that names the file and says what was expected."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pid_trt.errors import InputFileError, PidTrtError
from pid_trt.quoting import printable


@contextmanager
def reading(what: str, expected: str, error: type[PidTrtError] = InputFileError) -> Iterator[None]:
    """Turn the OS and decoding errors raised inside the block into ``error``:
    ``"{what}: file not found"``, ``"{what}: is a directory, expected {expected}"``,
    ``"{what}: not UTF-8 text (...)"`` or ``"{what}: cannot be read (...)"``. ``what`` should
    already be quoted (:mod:`pid_trt.quoting`); it is escaped again here, which leaves quoted
    text unchanged, so that a raw path never reaches the message."""
    what = printable(what, 400)
    try:
        yield
    except FileNotFoundError:
        raise error(f"{what}: file not found") from None
    except IsADirectoryError:
        raise error(f"{what}: is a directory, expected {expected}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{what}: cannot be read ({exc.strerror or exc})") from None


def read_text(path: str | os.PathLike[str], what: str, expected: str) -> str:
    """The whole of a UTF-8 text file (a byte-order mark dropped), or one :func:`reading` error."""
    with reading(what, expected):
        return Path(path).read_bytes().decode("utf-8-sig")
