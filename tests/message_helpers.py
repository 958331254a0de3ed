"""Assertions on the messages a command or a reader gives for hostile input: one line, every
character printable, capped, naming the field."""

from __future__ import annotations

#: Longest message a test accepts for an error that quotes a hostile value (characters): a
#: value is capped where it is quoted, so a 10 kB name leaves a message of a few hundred.
MESSAGE_CAP = 1000


def assert_printable_line(message: str, *, cap: int | None = MESSAGE_CAP, names: tuple[str, ...] = ()) -> str:
    """Assert ``message`` is one non-empty line of printable characters (``str.isprintable``:
    no control character, no bidirectional or zero-width format character, no line or
    paragraph separator), at most ``cap`` characters, containing each of ``names``; return it."""
    assert message, "empty message"
    bad = sorted({f"U+{ord(c):04X}" for c in message if not c.isprintable()})
    assert not bad, f"unprintable character(s) {', '.join(bad)} in {message!r}"
    assert cap is None or len(message) <= cap, (
        f"{len(message)} characters, expected at most {cap}: {message[:200]!r}"
    )
    for name in names:
        assert name in message, f"{name!r} not named in {message!r}"
    return message
