"""``--help`` a person can read: every option of the big commands sits in a named panel, with a
one-line help string; the panels show in ``--help`` and in the generated CLI reference."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pid_trt.cli import reference
from pid_trt.cli.main import app
from pid_trt.cli.panels import PANELS, PIPELINE_PANEL

GROUPED = ("decode", "generate", "bench", "serve")
#: The panels of ``pidtrt decode`` (all but ``bench --pipeline``'s).
DECODE_PANELS = tuple(p for p in PANELS if p != PIPELINE_PANEL)


def _command(name: str):
    return reference.root_command().commands[name]


@pytest.mark.parametrize("name", GROUPED)
def test_every_option_has_a_panel_and_a_one_line_help(name: str) -> None:
    for option in _command(name).params:
        if option.param_type_name != "option" or option.opts == ["--help"]:
            continue
        assert reference.panel_of(option) in PANELS, f"pidtrt {name} {option.opts[0]}: no help panel"
        assert option.help and "\n" not in option.help, f"pidtrt {name} {option.opts[0]}: help not one line"
        assert len(option.help) <= 120, (
            f"pidtrt {name} {option.opts[0]}: help of {len(option.help)} characters"
        )


def test_decode_help_shows_the_panels() -> None:
    result = CliRunner().invoke(app, ["decode", "--help"], env={"COLUMNS": "120"}, terminal_width=120)
    assert result.exit_code == 0, result.output
    for panel in DECODE_PANELS:
        assert f"─ {panel} ─" in result.output, f"panel {panel!r} missing from pidtrt decode --help"
    # rich markup must not eat the brackets of NAME[:PRECISION][@DEVICE]
    assert "[@DEVICE]" in result.output.replace("\n", " ").replace("│", "").replace(" ", "")


def test_the_reference_groups_by_the_same_panels() -> None:
    page = reference.render_markdown()
    decode = page[page.index("## pidtrt decode") : page.index("## pidtrt encode-caption")]
    for panel in DECODE_PANELS:
        assert f"**{panel}**" in decode
    assert "`--tile-overlap` TILE\\_OVERLAP" in decode  # an option, its metavar escaped for Markdown
