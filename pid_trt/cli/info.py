"""``pidtrt info FILE``: how an image written by pid-trt was made (its ``pid-trt`` provenance).

Exit 0 with the provenance; 1 when the image carries none; 2 when the file is not a readable
image or its provenance is malformed (one line each, never a traceback)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pid_trt.cli.errors import cli_errors, report

#: Exit code of an image without provenance.
EXIT_ABSENT = 1

FileArg = Annotated[Path, typer.Argument(help="A PNG, JPEG or WebP written by pid-trt.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the provenance as JSON.")]


@cli_errors
def info(file: FileArg, as_json: JsonOpt = False) -> None:
    """Print how an output image was made: net, checkpoint, backend, precision, seed, steps, size,
    tiles, caption, licence."""
    from pid_trt.io.provenance import ProvenanceAbsent, read_provenance

    try:
        data = read_provenance(file)
    except ProvenanceAbsent as exc:
        report(str(exc))
        raise typer.Exit(EXIT_ABSENT) from None
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
        return
    typer.echo(render(data))


#: The order of the table's rows (other fields follow, sorted).
ORDER = (
    "net", "backbone", "ckpt_type", "checkpoint", "checkpoint_sha256", "weights", "backend", "precision",
    "device", "size", "batch", "tiles", "steps", "seed", "degrade_sigma", "caption", "prompt", "caption_file",
    "version", "licence",
)  # fmt: skip


def render(data: dict) -> str:
    """The provenance as a two-column table (empty fields left out)."""
    keys = [k for k in ORDER if k in data] + sorted(k for k in data if k not in ORDER)
    rows = []
    for key in keys:
        value = data[key]
        if value is None or value == [] or value == {}:
            continue
        if isinstance(value, list):
            value = ", ".join(
                json.dumps(v, ensure_ascii=False) if isinstance(v, str) else str(v) for v in value
            )
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True, ensure_ascii=False)
        rows.append((key, str(value)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
