"""Single flags several commands share, each declared once as an ``Annotated`` alias (the
option bundles and the model, runtime, tiling and caption flags are in
:mod:`pid_trt.cli.options`); a command lists one as ``seed: Seed = 0``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pid_trt.cli.panels import CAPTIONS_PANEL, IO_PANEL, MANY_PANEL, SERVER_PANEL

# ------------------------------------------------------------------ engine shapes (build, export)
MinSize = Annotated[str | None, typer.Option("--min-size", help="--dynamic: smallest WIDTHxHEIGHT.")]
OptSize = Annotated[
    str | None, typer.Option("--opt-size", help="--dynamic: the size to tune for (WIDTHxHEIGHT).")
]
MaxSize = Annotated[str | None, typer.Option("--max-size", help="--dynamic: largest WIDTHxHEIGHT.")]

# ------------------------------------------------------------------ inputs
Seed = Annotated[
    int,
    typer.Option(
        "--seed",
        help="Seed of the sampler's noise (ignored with --noise; one seed, one image, local or served).",
        rich_help_panel=IO_PANEL,
    ),
]
CaptionFile = Annotated[
    Path | None,
    typer.Option(
        "--caption",
        help="Caption file from `pidtrt encode-caption` (caption_embedding [N, T, D]).",
        rich_help_panel=CAPTIONS_PANEL,
    ),
]
PromptsFile = Annotated[
    Path | None,
    typer.Option(
        "--prompts-file",
        help="Text file, one prompt a line (blank lines skipped); read after the prompts given.",
        rich_help_panel=IO_PANEL,
    ),
]
SkipExisting = Annotated[
    bool,
    typer.Option(
        "--skip-existing",
        help="Skip the inputs whose outputs all exist (resume an interrupted run).",
        rich_help_panel=MANY_PANEL,
    ),
]
RequestTimeout = Annotated[
    float,
    typer.Option(
        "--timeout", help="Seconds one request to the server may take.", rich_help_panel=SERVER_PANEL
    ),
]
#: The Gemma-2-2B-it folder of the commands that encode prompts themselves (its variable shown).
TextEncoderEnv = Annotated[
    str | None,
    typer.Option(
        "--text-encoder",
        envvar="PIDTRT_TEXT_ENCODER",
        show_envvar=True,
        help="Local Gemma-2-2B-it directory (or a hub id already in the local HF cache).",
        rich_help_panel=CAPTIONS_PANEL,
    ),
]
