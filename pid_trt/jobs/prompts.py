"""Prompts for a run over many prompts: a prompts file (upstream's ``--prompt_file``, one
prompt a line) and prompts given one by one, and the folder name each prompt's outputs get.

The whole file is read and checked before anything runs: a missing, non-UTF-8 or empty file
(nothing but blank lines) fails the command at once, naming the file.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Sequence

from pid_trt.errors import ConfigError, InputFileError
from pid_trt.input_files import read_text
from pid_trt.quoting import printable

#: Longest slug of a prompt in its folder name (characters; cut at a word boundary).
SLUG_CHARS = 48


def read_prompts_file(path: str | os.PathLike[str]) -> list[str]:
    """The prompts of a text file, one a line, in order: surrounding white space stripped,
    blank lines skipped (a UTF-8 byte-order mark is dropped). InputFileError naming the file
    when it is missing, not UTF-8 or holds no prompt."""
    what = f"prompts file {printable(path)}"
    text = read_text(path, what, "a text file with one prompt a line")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise InputFileError(f"{what}: no prompts (expected one prompt a line; blank lines are skipped)")
    return prompts


def collect_prompts(prompts: Sequence[str] = (), files: Sequence[str | os.PathLike[str]] = ()) -> list[str]:
    """The prompts given one by one, then each file's (:func:`read_prompts_file`), in order;
    ConfigError when there are none or one given directly is blank."""
    collected: list[str] = []
    for prompt in prompts:
        if not prompt.strip():
            raise ConfigError("--prompt '': expected some text (an empty prompt)")
        collected.append(prompt)
    for path in files:
        collected += read_prompts_file(path)
    if not collected:
        raise ConfigError("no prompt: give --prompt TEXT (repeatable) or --prompts-file FILE")
    return collected


def slug(prompt: str, limit: int = SLUG_CHARS) -> str:
    """A file-name-safe short form of a prompt: ASCII letters and digits in lower case,
    words joined by ``-``, at most ``limit`` characters (cut at a word boundary where one
    falls in the second half); ``prompt`` when nothing is left."""
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii")
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    text = "-".join(words)
    if len(text) > limit:
        cut = text.rfind("-", 0, limit + 1)
        text = text[:cut] if cut >= limit // 2 else text[:limit]
    return text or "prompt"


def prompt_folder(index: int, prompt: str, total: int) -> str:
    """The folder of prompt ``index`` (from 0) of ``total``: ``<index>-<slug>``, the index
    zero-padded to at least 4 digits (so folders sort in prompt order), e.g. ``0007-a-red-fox``."""
    width = max(4, len(str(max(total - 1, 0))))
    return f"{index:0{width}d}-{slug(prompt)}"
