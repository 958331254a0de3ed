"""``pidtrt bench --pipeline``: the host path (read, copy, quantize, encode, write) measured
against a real or simulated device (:mod:`pid_trt.bench.pipeline`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from pid_trt.cli.options import option_bundle, option_param
from pid_trt.cli.outputs import Writers
from pid_trt.cli.panels import PIPELINE_PANEL
from pid_trt.errors import ConfigError
from pid_trt.io.encoders import OutputOptions
from pid_trt.options import NetOptions

Pipeline = Annotated[
    bool,
    typer.Option(
        "--pipeline",
        help="Measure the host pipeline (read, copy, quantize, encode, write).",
        rich_help_panel=PIPELINE_PANEL,
    ),
]
SimulateMs = Annotated[
    float | None,
    typer.Option(
        "--simulate-device-ms",
        min=0.0,
        help="--pipeline: replace the network by a wait of MS per image.",
        rich_help_panel=PIPELINE_PANEL,
    ),
]
SimulateDevice = Annotated[
    str | None,
    typer.Option(
        "--simulate-device",
        help="--pipeline: wait the cost model's floor for the backbone and size: GPU:PRECISION (h100:bf16).",
        rich_help_panel=PIPELINE_PANEL,
    ),
]
Images = Annotated[
    int, typer.Option("--images", min=2, help="--pipeline: images per case.", rich_help_panel=PIPELINE_PANEL)
]
Format = Annotated[
    list[str],
    typer.Option(
        "--format", help="--pipeline: png, jpg (jpeg) or webp (repeatable).", rich_help_panel=PIPELINE_PANEL
    ),
]
NoSerial = Annotated[
    bool,
    typer.Option(
        "--no-serial",
        help="--pipeline: skip the serial (before-pipeline) rows.",
        rich_help_panel=PIPELINE_PANEL,
    ),
]
_FORMATS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}

#: The command-line parameters of ``bench --pipeline`` (``--writers`` from :mod:`pid_trt.cli.outputs`).
PIPELINE_PARAMS = (
    option_param("pipeline", Pipeline, False),
    option_param("simulate_device_ms", SimulateMs, None),
    option_param("simulate_device", SimulateDevice, None),
    option_param("images", Images, 16),
    option_param("formats", Format, ("png",)),
    option_param("writers", Writers, None),
    option_param("no_serial", NoSerial, False),
)


def _pipeline_flags(*values) -> dict:
    return dict(zip((p.name for p in PIPELINE_PARAMS), values, strict=True))


#: ``@with_pipeline`` on a command with ``pipe: dict``: typer sees the ``--pipeline`` flags.
with_pipeline = option_bundle("pipe", PIPELINE_PARAMS, _pipeline_flags)


def bench_pipeline(
    net: NetOptions, sizes: list[tuple[int, int]], pipe: dict, encoding: OutputOptions,
    json_path: Path | None, markdown_path: Path | None, title: str | None,
) -> None:  # fmt: skip
    """Translate the flags (``pipe``: :data:`PIPELINE_PARAMS`' values) into a
    :class:`~pid_trt.bench.pipeline.PipelinePlan`, run it, report."""
    from pid_trt.bench.pipeline import dump_document, render_markdown

    plan = _plan(net, sizes, pipe, encoding)
    records = _run(plan, net)
    text = render_markdown(records, title)
    typer.echo(text)
    if json_path is not None:
        meta = {
            "command": "pidtrt bench --pipeline", "backbone": plan.backbone,
            "simulate_device": pipe["simulate_device"], "cpu_cores": len(os.sched_getaffinity(0)),
            "load_average": list(os.getloadavg()), "machine": os.uname().machine,
        }  # fmt: skip
        _write(json_path, dump_document(records, meta))
    if markdown_path is not None:
        _write(markdown_path, text)


def _plan(net: NetOptions, sizes: list[tuple[int, int]], pipe: dict, encoding: OutputOptions):
    """The :class:`~pid_trt.bench.pipeline.PipelinePlan` the flags ask for (one-line refusals)."""
    from pid_trt.bench.pipeline import PipelinePlan, device_floor_ms
    from pid_trt.io.encoders import OutputFormat
    from pid_trt.io.writer import default_writers

    device_ms, device, writers = pipe["simulate_device_ms"], pipe["simulate_device"], pipe["writers"]
    if device_ms is not None and device is not None:
        raise ConfigError("--simulate-device-ms and --simulate-device exclude each other: pass one")
    formats = list(pipe["formats"])
    bad = [f for f in formats if f.lower() not in _FORMATS]
    if bad:
        raise ConfigError(f"--format {bad[0]}: expected png, jpg or webp")
    fmts = tuple(dict.fromkeys(OutputFormat(_FORMATS[f.lower()]) for f in formats or ["png"]))
    backbone = net.backbone or "flux"
    if device is not None:
        per_size = tuple(device_floor_ms(backbone, h, w, device) for h, w in sizes)
    else:
        per_size = (device_ms,) * len(sizes)
    return PipelinePlan(
        backbone, tuple(sizes), fmts, pipe["images"], default_writers() if writers is None else writers,
        encoding, per_size, not pipe["no_serial"],
    )  # fmt: skip


def _run(plan, net: NetOptions) -> list:
    """Run ``plan``: against the simulated device when every size has one, else the real network."""
    from pid_trt.bench.pipeline import run_pipeline_bench
    from pid_trt.config import get_preset

    def progress(case):
        dev = "real network" if case.device_ms is None else f"device {case.device_ms:.0f} ms"
        typer.echo(
            f"{case.path} {case.fmt.value} {case.width}x{case.height}, {dev}, {case.images} images", err=True
        )

    if all(ms is not None for ms in plan.device_ms):
        config = get_preset(plan.backbone).config if net.net_config is None else net.resolve().config
        return run_pipeline_bench(plan, config, None, progress)
    from pid_trt.decoder import Decoder
    from pid_trt.options import RuntimeOptions

    with Decoder.from_options(net, RuntimeOptions()) as decoder:
        return run_pipeline_bench(plan, net.resolve().config, decoder, progress)


def _write(path: Path, text: str) -> None:
    """Write a report atomically, making its folder."""
    from pid_trt.atomic import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())
