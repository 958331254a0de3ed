"""``pidtrt engines list|rm|show``: what is in the engine store, removing from it, one engine inside."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pid_trt.cli.errors import cli_errors
from pid_trt.cli.options import EngineDir, ExportDir
from pid_trt.quoting import printable

engines = typer.Typer(help="List, show or remove TensorRT engines in the engine store.", no_args_is_help=True)


@engines.command("list")
@cli_errors
def list_engines(engine_dir: EngineDir = Path("engines")) -> None:
    """Table of the engines: name, bucket, precision, flavour+version, targets, size, created, status."""
    from rich.console import Console
    from rich.table import Table

    from pid_trt.stores.listing import ENGINE_COLUMNS, engine_row, mebibytes
    from pid_trt.stores.store import EngineStore

    entries = EngineStore(engine_dir).list()
    if not entries:
        typer.echo(f"no engines in {engine_dir}")
        return
    table = Table(title=f"engines in {engine_dir}")
    for col in ENGINE_COLUMNS:
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(*engine_row(e))
    Console(width=200).print(table)
    typer.echo(f"{len(entries)} engine(s), {mebibytes(sum(e.size_bytes for e in entries))}")


@engines.command("rm")
@cli_errors
def remove_engines(
    digest: str | None = typer.Argument(None, help="Engine id (6+ hex digits of its digest)."),
    all_: bool = typer.Option(False, "--all", help="Remove every engine (and unfinished temp files)."),
    engine_dir: EngineDir = Path("engines"),
) -> None:
    """Remove one engine by id, or all of them."""
    from pid_trt.errors import ConfigError
    from pid_trt.stores.store import EngineStore

    if all_ == (digest is not None):
        raise ConfigError("engines rm: give an engine id (see `pidtrt engines list`) or --all")
    removed = EngineStore(engine_dir).remove("all" if all_ else str(digest))
    for name in removed:
        typer.echo(f"removed {printable(name)}")
    typer.echo(f"{len(removed)} engine(s) removed from {engine_dir}")


@engines.command("show")
@cli_errors
def show_engine(
    engine: str = typer.Argument(
        ..., help="A .plan path, or an engine id (6+ hex digits, see `engines list`)."
    ),
    engine_dir: EngineDir = Path("engines"),
    export_dir: ExportDir = Path("export"),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as JSON."),
) -> None:
    """Per-layer precision summary, attention, I/O tensors, targets and the manifest of one engine."""
    from pid_trt.verify.engine_info import format_info, inspect_engine, locate

    plan, manifest = locate(engine, engine_dir)
    info = inspect_engine(plan, manifest, export_dir)
    typer.echo(json.dumps(info.as_dict(), indent=2) if as_json else format_info(info))
