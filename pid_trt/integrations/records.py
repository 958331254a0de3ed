"""JSON records and run manifests of the integrations' runs (``generate``, ``decode
--compare-vae``): written atomically, read back tolerantly, paths relative to their folder."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pid_trt.atomic import atomic_write_bytes
from pid_trt.errors import InputFileError


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """``data`` as indented UTF-8 JSON at ``path``, atomically; InputFileError for a failed write."""
    try:
        atomic_write_bytes(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    except OSError as exc:
        raise InputFileError(f"output {os.fspath(path)}: write failed ({exc.strerror or exc})") from None


def read_record(path: Path) -> dict[str, Any] | None:
    """A record (a JSON object) without its ``format`` / ``version``, or None when it is
    absent or unreadable (then what it records counts as not done)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    data.pop("format", None)
    data.pop("version", None)
    return data


def relative(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
    """``path`` relative to ``root`` (POSIX separators), or as given when it is not below it."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return os.fspath(path)
