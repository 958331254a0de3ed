"""``pidtrt engines list|rm|show``: what is in the engine store, removing from it, one engine inside."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import typer

from pid_trt.cli.errors import cli_errors
from pid_trt.cli.options import (
    ExportDir,
)

engines = typer.Typer(help="List, show or remove TensorRT engines in the engine store.", no_args_is_help=True)

EngineDirOpt = typer.Option(Path("engines"), "--engine-dir", help="Engine store.")


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _net_name(net: dict) -> str:
    """The preset name whose net config equals ``net``, else ``custom-<hash4>``."""
    from pid_trt.config import all_presets

    for preset in all_presets():
        if json.loads(preset.config.to_json()) == net:
            return preset.name
    return "custom-" + hashlib.sha256(json.dumps(net, sort_keys=True).encode()).hexdigest()[:4]


def _bucket(k: dict) -> str:
    """``WxH`` of a static engine; ``Wmin-WmaxxHmin-Hmax dynamic`` of a dynamic one."""
    rng = k.get("range")
    if isinstance(rng, dict):
        w, h = rng.get("width") or ["?"] * 3, rng.get("height") or ["?"] * 3
        return f"{w[0]}-{w[-1]}x{h[0]}-{h[-1]} dynamic"
    return f"{k.get('width', '?')}x{k.get('height', '?')}"


@engines.command("list")
@cli_errors
def list_engines(engine_dir: Path = EngineDirOpt) -> None:
    """Table of the engines: name, bucket, precision, flavour+version, targets, size, created, status."""
    from rich.console import Console
    from rich.table import Table

    from pid_trt.stores.store import EngineStore, engine_status

    entries = EngineStore(engine_dir).list()
    if not entries:
        typer.echo(f"no engines in {engine_dir}")
        return
    table = Table(title=f"engines in {engine_dir}")
    for col in (
        "id",
        "net",
        "graph",
        "bucket",
        "batch",
        "precision",
        "flavour",
        "targets",
        "size",
        "created",
        "status",
    ):
        table.add_column(col, overflow="fold")
    for e in entries:
        status, reason = engine_status(e)
        k = e.manifest.get("key") if isinstance(e.manifest.get("key"), dict) else {}
        b = e.manifest.get("build") if isinstance(e.manifest.get("build"), dict) else {}
        lo, _, hi = (k.get("batch_range") or ["?", "?", "?"])[:3]
        net = _net_name(k["net_config"]) if isinstance(k.get("net_config"), dict) else "?"
        table.add_row(
            e.digest[:12] or "?",
            net,
            str(b.get("graph", "?")),
            _bucket(k),
            str(lo) if lo == hi else f"{lo}-{hi}",
            str(k.get("precision", "?")) + (" weightless" if k.get("weightless") else ""),
            f"{k.get('flavour', '?')} {k.get('trt_version', '?')}",
            ",".join(map(str, k.get("compute_capabilities") or [])),
            _size(e.size_bytes),
            e.created.replace("+00:00", "Z"),
            status.value + (f": {reason}" if reason else ""),
        )
    Console(width=200).print(table)
    total = sum(e.size_bytes for e in entries)
    typer.echo(f"{len(entries)} engine(s), {_size(total)}")


@engines.command("rm")
@cli_errors
def remove_engines(
    digest: str | None = typer.Argument(None, help="Engine id (6+ hex digits of its digest)."),
    all_: bool = typer.Option(False, "--all", help="Remove every engine (and unfinished temp files)."),
    engine_dir: Path = EngineDirOpt,
) -> None:
    """Remove one engine by id, or all of them."""
    from pid_trt.errors import ConfigError
    from pid_trt.stores.store import EngineStore

    if all_ == (digest is not None):
        raise ConfigError("engines rm: give an engine id (see `pidtrt engines list`) or --all")
    removed = EngineStore(engine_dir).remove("all" if all_ else str(digest))
    for name in removed:
        typer.echo(f"removed {name}")
    typer.echo(f"{len(removed)} engine(s) removed from {engine_dir}")


@engines.command("show")
@cli_errors
def show_engine(
    engine: str = typer.Argument(
        ..., help="A .plan path, or an engine id (6+ hex digits, see `engines list`)."
    ),
    engine_dir: Path = EngineDirOpt,
    export_dir: ExportDir = Path("export"),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as JSON."),
) -> None:
    """Per-layer precision summary, attention, I/O tensors, targets and the manifest of one engine."""
    from pid_trt.verify.engine_info import format_info, inspect_engine, locate

    plan, manifest = locate(engine, engine_dir)
    info = inspect_engine(plan, manifest, export_dir)
    typer.echo(json.dumps(info.as_dict(), indent=2) if as_json else format_info(info))
