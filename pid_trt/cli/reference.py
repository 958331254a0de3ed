"""The ``pidtrt`` command tree as data: every command, its options and their help panels.

Two readers: the documentation's CLI reference page (:func:`render_markdown`, so the page is
generated from the very app the console script runs and cannot drift) and the documentation
tests, which check every ``pidtrt SUBCOMMAND --flag`` written in the docs against
:func:`known_flags`. Typer ships its own copy of click, so the objects are read by their
attributes (``commands``, ``params``, ``opts``), not by click's classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: The panel of an option declared without one (typer's own name for it).
DEFAULT_PANEL = "Options"


@dataclass(frozen=True)
class CommandEntry:
    """One runnable command: its words after ``pidtrt`` (e.g. ``("engines", "list")``) and the click object."""

    path: tuple[str, ...]
    command: Any


def root_command() -> Any:
    """The click group behind ``pidtrt`` (typer's app, converted)."""
    import typer.main

    from pid_trt.cli.main import app

    return typer.main.get_command(app)


def _is_group(command: Any) -> bool:
    return hasattr(command, "commands")


def _options(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "option"]


def commands(group: Any = None, prefix: tuple[str, ...] = ()) -> Iterator[CommandEntry]:
    """Every leaf command under ``group`` (default: ``pidtrt``), depth first, in name order."""
    group = group or root_command()
    for name, command in sorted(group.commands.items()):
        if command.hidden:
            continue
        if _is_group(command):
            yield from commands(command, prefix + (name,))
        else:
            yield CommandEntry(prefix + (name,), command)


def known_flags(command: Any) -> set[str]:
    """The option spellings ``command`` accepts, short and long, ``--help`` included."""
    flags = {"--help"}
    for option in _options(command):
        flags.update(option.opts)
        flags.update(option.secondary_opts)
    return flags


def group_names(group: Any = None, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The paths of the command groups (``()`` and e.g. ``("engines",)``): words that take a subcommand."""
    group = group or root_command()
    found = {prefix}
    for name, sub in group.commands.items():
        if _is_group(sub):
            found |= group_names(sub, prefix + (name,))
    return found


def panel_of(param: Any) -> str:
    """The help panel typer shows ``param`` in (``rich_help_panel``), or :data:`DEFAULT_PANEL`."""
    return getattr(param, "rich_help_panel", None) or DEFAULT_PANEL


def panels(command: Any) -> dict[str, list[Any]]:
    """The options of ``command`` by panel, the panels in :data:`~pid_trt.cli.panels.PANELS` order
    (others, typer's plain "Options" among them, after those)."""
    from pid_trt.cli.panels import PANELS

    out: dict[str, list[Any]] = {}
    for option in _options(command):
        if not option.hidden:
            out.setdefault(panel_of(option), []).append(option)
    rank = {name: i for i, name in enumerate(PANELS)}
    return dict(sorted(out.items(), key=lambda item: rank.get(item[0], len(rank))))


_MARKDOWN_ESCAPES = str.maketrans({c: "\\" + c for c in "|*[]_"} | {"<": "&lt;", ">": "&gt;"})


def _text(text: str) -> str:
    """Help text as Markdown that shows it as ``--help`` does: rich's ``\\[`` escape undone, and
    ``[@DEVICE]`` no link, ``**`` no bold."""
    return text.replace("\\[", "[").translate(_MARKDOWN_ESCAPES)


def _cell(text: str) -> str:
    return _text(" ".join(text.split()))


def _default(option: Any) -> str:
    if option.is_flag and not option.default:
        return ""
    if option.default is None or option.default == () or option.default == []:
        return ""
    value = option.default
    if isinstance(value, list | tuple):
        value = ", ".join(map(str, value))
    return f"`{value}`"


def _spelling(option: Any) -> str:
    names = ", ".join(f"`{o}`" for o in option.opts + option.secondary_opts)
    if option.is_flag or option.count:
        return names
    metavar = option.metavar or (option.name or "value").upper()
    return f"{names} {_cell(metavar)}"


def _argument_name(argument: Any) -> str:
    name = (argument.name or "arg").upper()
    return name + "..." if argument.nargs != 1 else name


def render_command(entry: CommandEntry, level: int = 2) -> str:
    """Markdown for one command: heading, usage, help, arguments, then one table per panel."""
    command = entry.command
    words = " ".join(entry.path)
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    usage = " ".join(["pidtrt", words, "[OPTIONS]", *map(_argument_name, arguments)])
    lines = [f"{'#' * level} pidtrt {words}", "", f"`{usage}`", ""]
    if command.help:
        lines += [_text(command.help.strip()), ""]
    lines += [f"- `{_argument_name(a)}`: {_cell(getattr(a, 'help', None) or '')}" for a in arguments]
    if arguments:
        lines.append("")
    for panel, options in panels(command).items():
        lines += [f"**{panel}**", "", "| option | default | what |", "|---|---|---|"]
        lines += [f"| {_spelling(o)} | {_default(o)} | {_cell(o.help or '')} |" for o in options]
        lines.append("")
    return "\n".join(lines)


def render_markdown(level: int = 2) -> str:
    """The whole reference: every command of ``pidtrt``, in name order."""
    return "\n".join(render_command(entry, level) for entry in commands())
