"""The help panels of ``pidtrt --help`` (typer's ``rich_help_panel``), one set for every command.

An option names its panel where it is declared: ``typer.Option("--seed", help=...,
rich_help_panel=IO_PANEL)``. ``decode``, ``generate``, ``bench`` and ``serve`` place every option
in one of these; an option without a panel shows under typer's plain "Options". The CLI
reference page of the docs groups options by the same panels (:mod:`pid_trt.cli.reference`).
"""

from __future__ import annotations

#: Files read and written: inputs, -o, seeds and noise, reports, --dry-run.
IO_PANEL = "Input/output"
#: Which network and weights: --backbone, --checkpoint, --random-weights, an LDM pipeline.
MODEL_PANEL = "Model"
#: How it runs: backend, precision, device, stores, threads, sampler steps, memory check.
RUNTIME_PANEL = "Runtime"
#: The output size and tiling: --size, --res, --tiles, --tile-*, --devices for tiles.
SIZE_PANEL = "Size and tiles"
#: How images are encoded and written: --png-level, --quality, --bit-depth, --writers, --batch.
OUTPUT_PANEL = "Output format"
#: ``bench --pipeline``: the host path measured against a real or simulated device.
PIPELINE_PANEL = "Host pipeline"
#: Caption embeddings and prompts: --prompt, --caption, --text-encoder, the caption cache.
CAPTIONS_PANEL = "Captions"
#: Many inputs in one run and the ranks of a torchrun launch: --skip-existing.
MANY_PANEL = "Many files and ranks"
#: A server: `pidtrt serve`'s own options, and --server / --concurrency of a client.
SERVER_PANEL = "Server"

#: Every panel, in the order ``--help`` shows them when a command has them all.
PANELS = (
    IO_PANEL, OUTPUT_PANEL, MODEL_PANEL, RUNTIME_PANEL, SIZE_PANEL, CAPTIONS_PANEL, MANY_PANEL, SERVER_PANEL,
    PIPELINE_PANEL,
)  # fmt: skip
