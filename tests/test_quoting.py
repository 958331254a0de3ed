"""The quoting rule (pid_trt/quoting.py) on hand-written cases: what is escaped and how, the
cap and its marker, and that quoted text is left as it is by a second pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from pid_trt.quoting import printable, quote, quote_names
from tests.message_helpers import assert_printable_line


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[2J\x1b[31m", "\\x1b[2J\\x1b[31m"),  # ESC: clear screen, red
        ("ok\rfake", "ok\\rfake"),  # CR: rewrite the line
        ("a\nb\tc", "a\\nb\\tc"),
        ("nul\x00bel\x07del\x7f", "nul\\x00bel\\x07del\\x7f"),
        ("c1\x9b31m\x85", "c1\\x9b31m\\x85"),  # C1: 8-bit CSI, next line
        ("evil\u202egnp.exe", "evil\\u202egnp.exe"),  # right-to-left override
        ("\u2066iso\u2069 \u200bzw\ufeff", "\\u2066iso\\u2069 \\u200bzw\\ufeff"),  # isolates, zero width, BOM
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        ("nbsp\u00a0", "nbsp\\xa0"),
        ("bad\udcffbyte", "bad\\udcffbyte"),  # a file name's undecodable byte (surrogateescape)
        ("tag\U000e0041", "tag\\U000e0041"),  # an invisible tag character (Cf, beyond the BMP)
        ("plain ascii, é, 日本, emoji 🎉", "plain ascii, é, 日本, emoji 🎉"),  # printable: unchanged
    ],
)
def test_printable_escapes_every_unprintable_character(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert quote(raw) == f"'{shown}'"
    assert_printable_line(quote(raw))


def test_quote_escapes_backslash_and_quote_as_repr_does() -> None:
    assert quote("it's a\\b") == "'it\\'s a\\\\b'"
    assert quote(r"\x1b") != quote("\x1b")  # a literal backslash-x is not an escape
    assert printable(Path("dir/x\x1by.png")) == "dir/x\\x1by.png"
    assert printable(b"raw\xff\x1b") == "raw\\xff\\x1b"


def test_non_strings_are_shown_as_their_repr_escaped() -> None:
    assert quote(["\r", 1]) == "['\\r', 1]"
    assert quote(None) == "None" and quote(3) == "3" and quote({"a": 1.5}) == "{'a': 1.5}"


def test_the_cap_marks_the_cut_and_the_length() -> None:
    long = "n" * 10_000
    assert quote(long) == "'" + "n" * 80 + "… (10000 characters)'"
    assert printable(long, 10) == "n" * 10 + "… (10000 characters)"
    # The cap counts the escaped text: 10 ESC are 40 characters shown.
    assert printable("\x1b" * 10, 12) == "\\x1b\\x1b\\x1b… (10 characters)"
    assert printable("x" * 200) == "x" * 200  # up to the cap: whole


def test_quoting_twice_changes_nothing() -> None:
    once = printable("a\x1b[2J\r\u202e" + "z" * 50)
    assert printable(once) == once


def test_quote_names_shows_a_few_and_counts_the_rest() -> None:
    assert quote_names([]) == "none"
    assert quote_names(["a\x1b", "b"]) == "'a\\x1b', 'b'"
    names = [f"n{i}" for i in range(20)]
    assert quote_names(names, most=3) == "'n0', 'n1', 'n2', … (20 in all)"
