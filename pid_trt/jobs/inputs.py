"""Which input files a list of arguments names: files, directories, glob patterns.

Each argument is a file, a directory (its files with one of the accepted suffixes, sorted,
not recursive) or a glob pattern (``runs/**/*.safetensors`` recurses; a quoted pattern is
expanded here, not by the shell). The result keeps the arguments' order and names each
file once. An argument that names no file (an empty directory, a pattern matching nothing)
is a :class:`Problem`, reported beside the files; a missing plain file is kept, so that the
job reading it reports it, by name, as a failed input.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from pid_trt.quoting import printable, quote

#: The suffix of a PiD latent file, the input of ``pidtrt decode``.
LATENT_SUFFIX = ".safetensors"


class Problem(NamedTuple):
    """An argument that names no input file, and the one-line reason."""

    arg: str
    message: str


def is_single(args: Sequence[str | os.PathLike[str]]) -> bool:
    """One argument naming one file (or nothing yet): the single-file form of a command."""
    if len(args) != 1:
        return False
    text = os.fspath(args[0])
    return not Path(text).is_dir() and not (glob.has_magic(text) and not Path(text).exists())


def expand_inputs(
    args: Sequence[str | os.PathLike[str]], suffixes: Sequence[str] = (LATENT_SUFFIX,)
) -> tuple[list[Path], list[Problem]]:
    """The files the arguments name, in order, each once (by resolved path); and a
    :class:`Problem` per argument that names none. ``suffixes``: the file suffixes a
    directory contributes (case-sensitive, e.g. ``(".safetensors",)``); a glob pattern or a
    plain file is taken whatever its suffix."""
    files: list[Path] = []
    problems: list[Problem] = []
    for arg in args:
        text = os.fspath(arg)
        path = Path(text)
        if path.is_dir():
            found = sorted(p for s in suffixes for p in path.glob(f"*{s}") if p.is_file())
            if not found:
                kinds = " or ".join(suffixes)
                problems.append(Problem(text, f"directory {printable(text)} has no {kinds} file"))
        elif glob.has_magic(text) and not path.exists():
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                problems.append(Problem(text, f"no file matches {quote(text, 200)}"))
        else:
            found = [path]
        files += found
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems
