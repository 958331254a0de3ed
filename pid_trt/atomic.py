"""Atomic file writes: a file either keeps its old content or gets the complete new one.

Used for every artifact pid-trt writes (images, latent / noise files, ONNX graphs, engine
plans, manifests), so that a crash, a full disk or a concurrent writer never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

#: Prefix of the temp files :func:`atomic_write` creates beside the target; anything
#: carrying it is scratch (e.g. left behind by a killed process) and may be deleted.
TEMP_PREFIX = ".pidtrt-tmp-"


def temp_path_for(path: str | os.PathLike[str]) -> Path:
    """A fresh, unused-looking temp path in the same directory as ``path``.

    Same directory so that the final ``os.replace`` is a rename within one file system.
    The name starts with :data:`TEMP_PREFIX` and keeps the target's name for debugging.
    """
    target = Path(path)
    return target.with_name(f"{TEMP_PREFIX}{target.name}.{os.getpid()}.{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Write ``path`` atomically: yield a temp path, then fsync it and rename it over ``path``.

    Usage::

        with atomic_write("out.png") as tmp:
            image.save(tmp, format="PNG")        # anything that writes to a path

    The body writes the complete new content to the yielded temp path (in the same
    directory as ``path``). On normal exit the temp file is fsynced, moved onto ``path``
    with :func:`os.replace` (atomic on POSIX and Windows), and the directory is fsynced
    where the platform allows. If the body raises, or the body did not create the temp
    file, or the fsync / rename fails, the temp file is removed, ``path`` is left exactly
    as it was (absent or with its old content) and the exception propagates.

    Concurrent writers of the same ``path`` each use their own temp file; the last rename
    wins and readers only ever see one complete version. The parent directory must exist.
    """
    target = Path(path)
    tmp = temp_path_for(target)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"atomic write of {target}: nothing was written to the temp file")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def _fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory``; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
