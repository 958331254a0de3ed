"""The output options of the commands that write images (``decode``, ``generate``): how each
format is encoded (:class:`pid_trt.io.OutputOptions`), the writer threads and the files batched
into one decode."""

from __future__ import annotations

from typing import Annotated

import typer

from pid_trt.cli.options import option_bundle, option_param
from pid_trt.cli.panels import MANY_PANEL, OUTPUT_PANEL
from pid_trt.io.encoders import DEFAULT_PNG_LEVEL, DEFAULT_QUALITY, OutputOptions

PngLevel = Annotated[
    int,
    typer.Option(
        "--png-level",
        help="PNG compression: 0 stored, 1 ISA-L (default, fastest), 2 zlib run-length (smaller), 3..9 slower; same pixels.",
        rich_help_panel=OUTPUT_PANEL,
    ),
]
Quality = Annotated[
    int, typer.Option("--quality", help="JPEG / lossy WebP quality, 1..100.", rich_help_panel=OUTPUT_PANEL)
]
BitDepth = Annotated[
    int,
    typer.Option(
        "--bit-depth", help="Bits per channel of PNG outputs: 8 or 16.", rich_help_panel=OUTPUT_PANEL
    ),
]
WebpLossless = Annotated[
    bool, typer.Option("--webp-lossless", help="Write .webp outputs lossless.", rich_help_panel=OUTPUT_PANEL)
]
Writers = Annotated[
    int | None,
    typer.Option(
        "--writers",
        min=0,
        help="Threads encoding and writing while the next decode runs (default: from the cores; 0: none).",
        rich_help_panel=OUTPUT_PANEL,
    ),
]
Batch = Annotated[
    int,
    typer.Option(
        "--batch",
        min=1,
        help="Decode up to N same-size latent files of a many-file run together as one batch.",
        rich_help_panel=MANY_PANEL,
    ),
]

#: The command-line parameters that make an :class:`OutputOptions`, in its field order.
OUTPUT_PARAMS = (
    option_param("png_level", PngLevel, DEFAULT_PNG_LEVEL),
    option_param("quality", Quality, DEFAULT_QUALITY),
    option_param("bit_depth", BitDepth, 8),
    option_param("webp_lossless", WebpLossless, False),
)

#: ``@with_output`` on a command with ``encoding: OutputOptions``: typer sees the four options.
with_output = option_bundle("encoding", OUTPUT_PARAMS, OutputOptions)
