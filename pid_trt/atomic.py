"""Atomic file writes: a file either keeps its old content or gets the complete new one.

Used for every artifact pid-trt writes (images, latent / noise files, ONNX graphs, engine
plans, manifests), so that a crash, a full disk or a concurrent writer never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: Prefix of the temp files :func:`atomic_write` creates beside the target; anything
#: carrying it is scratch (e.g. left behind by a killed process) and may be deleted.
TEMP_PREFIX = ".pidtrt-tmp-"

#: How much older than a run's start a temp file of an unknown writer (another host's, or a
#: name without a pid) must be to count as stale: covers ranks of one run that start a
#: little apart on several nodes and clocks a little apart on a shared file system.
STALE_GRACE_S = 60.0

# <prefix><target name>.<pid>-<host tag>.<8 hex>; older names have no host tag.
_TEMP_NAME = re.compile(
    re.escape(TEMP_PREFIX) + r"(?P<target>.+)\.(?P<pid>[0-9]+)(?:-(?P<host>[0-9a-f]{8}))?\.[0-9a-f]{8}"
)


def host_tag(hostname: str | None = None) -> str:
    """8 hex digits naming this host (``hostname``: another's) in temp file names."""
    name = socket.gethostname() if hostname is None else hostname
    return hashlib.sha256(name.encode("utf-8", "replace")).hexdigest()[:8]


def temp_path_for(path: str | os.PathLike[str]) -> Path:
    """A fresh, unused-looking temp path in the same directory as ``path``.

    Same directory so that the final ``os.replace`` is a rename within one file system.
    The name is ``<TEMP_PREFIX><target name>.<pid>-<host tag>.<random>``: it keeps the
    target's name for debugging and says which process on which host writes it, so that a
    later run can tell a dead writer's leftover (:func:`remove_stale_temps`).
    """
    target = Path(path)
    return target.with_name(f"{TEMP_PREFIX}{target.name}.{os.getpid()}-{host_tag()}.{secrets.token_hex(4)}")


@dataclass(frozen=True)
class TempName:
    """What a temp file's name tells: the target's name, the writer's pid and host tag
    (None when the name has none)."""

    target: str
    pid: int | None
    host: str | None


def parse_temp_name(name: str) -> TempName | None:
    """The parts of a :func:`temp_path_for` name (also the older one without a host tag:
    pid, no host); a name with :data:`TEMP_PREFIX` but another shape has no pid; None for a
    name without the prefix."""
    if not name.startswith(TEMP_PREFIX):
        return None
    match = _TEMP_NAME.fullmatch(name)
    if match is None:
        return TempName(name[len(TEMP_PREFIX) :], None, None)
    return TempName(match["target"], int(match["pid"]), match["host"])


def pid_alive(pid: int) -> bool:
    """A process ``pid`` runs on this host (a process of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # cannot tell: keep its files
    return True


def writer_gone(path: Path, started: float, grace: float = STALE_GRACE_S) -> bool:
    """The temp file ``path`` is a leftover: written on this host by a pid that is not alive
    (nor this process), or, its writer unknown here (another host, no pid in the name), last
    modified more than ``grace`` seconds before ``started`` (a run's start, ``time.time()``)."""
    parsed = parse_temp_name(path.name)
    if parsed is None:
        return False
    if parsed.pid is not None and parsed.host == host_tag():
        return parsed.pid != os.getpid() and not pid_alive(parsed.pid)
    try:
        return path.stat().st_mtime < started - grace
    except OSError:
        return False


def remove_stale_temps(
    folder: str | os.PathLike[str], owns: Callable[[str], bool], started: float, grace: float = STALE_GRACE_S
) -> list[Path]:
    """Delete the temp files in ``folder`` (not below) whose target name ``owns`` accepts and
    whose writer is gone (:func:`writer_gone`); returns them. Anything else is left alone: a
    live writer's temp file, other names, files that vanish meanwhile."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        parsed = parse_temp_name(entry.name)
        if parsed is None or not owns(parsed.target) or not entry.is_file(follow_symlinks=False):
            continue
        path = Path(entry.path)
        if writer_gone(path, started, grace):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


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
    wins and readers only ever see one complete version. The parent directory must exist:
    if it does not, :class:`FileNotFoundError` naming it is raised before anything is written
    (writers such as safetensors' would otherwise fail with their own, foreign error).
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(
            errno.ENOENT, f"cannot write {target.name}: no such folder", str(target.parent)
        )
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
