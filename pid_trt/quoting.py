"""The one rule for putting untrusted text into a message: escape, then cap.

Any value a file, a manifest, a prompts file, an environment variable or a request supplies
(a tensor name, a header field, a path, a prompt, a parameter) goes into an error, log,
progress or summary line through :func:`quote` (a value, shown quoted like ``repr``) or
:func:`printable` (free text such as a path, shown bare). Both:

- escape every character that could act on a terminal or hide/reorder text instead of being
  seen: C0 and C1 control characters and DEL (``\\x1b``, ``\\r``, ``\\x00``, ``\\x9b`` ...),
  Unicode format characters (category Cf: the bidirectional controls U+202A..U+202E and
  U+2066..U+2069, zero-width characters such as U+200B, U+FEFF), the line and paragraph
  separators U+2028 / U+2029, lone surrogates (undecodable bytes of a file name), spaces
  other than U+0020 (no-break, ideographic ...), private-use and unassigned code points:
  every character :meth:`str.isprintable` refuses. They show as ``\\xNN``, ``\\uNNNN``
  or ``\\UNNNNNNNN`` (``\\n``, ``\\r``, ``\\t`` by name);
- cap the result at ``limit`` characters, marking the cut with ``…`` and the original length.

The result is one line of printable characters, so a message built from it stays one line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

#: Default cap, in characters, for a quoted value (a name, a field) and for free text (a path).
VALUE_LIMIT = 80
TEXT_LIMIT = 200

#: Marker appended where a value was cut.
ELLIPSIS = "…"

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def is_unsafe(ch: str) -> bool:
    """True for a character :func:`quote` and :func:`printable` escape (one character): any
    that is not printable (Unicode categories Cc, Cf, Cs, Co, Cn, Zl, Zp, and Zs but U+0020)."""
    return not ch.isprintable()


def _escape_char(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _escape(text: str, limit: int, extra: str = "") -> str:
    """``text`` with unsafe characters (and those in ``extra``, backslash-escaped) escaped,
    cut to at most ``limit`` characters plus the cut marker."""
    limit = max(limit, 1)
    out: list[str] = []
    used = 0
    for ch in text:
        if is_unsafe(ch):
            piece = _escape_char(ch)
        elif ch in extra:
            piece = "\\" + ch
        else:
            piece = ch
        if used + len(piece) > limit:
            return "".join(out) + f"{ELLIPSIS} ({len(text)} characters)"
        out.append(piece)
        used += len(piece)
    return "".join(out)


def printable(text: object, limit: int = TEXT_LIMIT) -> str:
    """``text`` (a str, a path, or anything ``str()`` accepts) shown bare: unsafe characters
    escaped, at most ``limit`` characters (then ``…`` and the original length)."""
    if isinstance(text, os.PathLike):
        text = os.fspath(text)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    return _escape(text if isinstance(text, str) else str(text), limit)


def quote(value: object, limit: int = VALUE_LIMIT) -> str:
    """``value`` for a message: a str in single quotes (backslash and quote escaped, as
    ``repr`` writes them); anything else as its ``repr`` (a list, a number, None). Unsafe
    characters escaped and the length capped at about ``limit`` characters either way."""
    if isinstance(value, str):
        return "'" + _escape(value, limit, extra="\\'") + "'"
    return _escape(repr(value), limit)


def quote_names(names: Sequence[object], most: int = 8, limit: int = VALUE_LIMIT) -> str:
    """``'a', 'b', ...`` for a list of untrusted names (each :func:`quote`-d), at most
    ``most`` of them then ``… (N in all)``; ``none`` for an empty list."""
    shown = ", ".join(quote(n, limit) for n in list(names)[:most])
    if len(names) > most:
        shown += f", {ELLIPSIS} ({len(names)} in all)"
    return shown or "none"
