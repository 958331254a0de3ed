"""``pidtrt build``: export (or reuse an export) and build both TensorRT engines of one bucket,
or (``--dynamic``) one pair for a range of sizes and batches; ``--weightless`` strips the weights."""

from __future__ import annotations

import resource
import threading
import time
from pathlib import Path

import typer

from pid_trt.cli.errors import cli_errors, warn
from pid_trt.cli.options import (
    BackboneOpt,
    CheckpointOpt,
    CkptTypeOpt,
    NetConfigOpt,
    RandomWeightsOpt,
    WeightsSeedOpt,
    resolve_net,
)
from pid_trt.errors import ConfigError


def parse_batch(text: str) -> tuple[int, int, int]:
    """``N`` or ``MIN:OPT:MAX`` -> (min, opt, max)."""
    parts = str(text).split(":")
    if len(parts) not in (1, 3) or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"--batch {text!r}: expected N or MIN:OPT:MAX (positive integers)")
    vals = [int(p) for p in parts]
    return (vals[0],) * 3 if len(vals) == 1 else (vals[0], vals[1], vals[2])  # type: ignore[return-value]


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _peak_rss() -> int:
    """Peak RSS in bytes of this process or any finished child (Linux ru_maxrss is KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return int(max(own, kids)) * 1024


class _RichProgress:
    """A :class:`pid_trt.compile.build.BuildProgress` that draws TensorRT's phases as rich tasks."""

    def __init__(self, progress, graph: str) -> None:
        self.progress, self.graph = progress, graph
        self.tasks: dict[str, int] = {}
        self.lock = threading.Lock()

    def phase_start(self, phase: str, parent: str | None, steps: int) -> None:
        with self.lock:
            indent = "  " if parent else ""
            self.tasks[phase] = self.progress.add_task(f"{indent}{self.graph}: {phase}", total=max(steps, 1))

    def step(self, phase: str, step: int) -> bool:
        with self.lock:
            if phase in self.tasks:
                self.progress.update(self.tasks[phase], completed=step + 1)
        return True

    def phase_finish(self, phase: str) -> None:
        with self.lock:
            task = self.tasks.pop(phase, None)
            if task is not None:
                self.progress.remove_task(task)


@cli_errors
def build(
    backbone: str | None = BackboneOpt,
    ckpt_type: str | None = CkptTypeOpt,
    res: int | None = typer.Option(None, "--res", help="Square output size N (N x N pixels)."),
    size: str | None = typer.Option(
        None, "--size", help="Output size WIDTHxHEIGHT in pixels, e.g. 3840x2160."
    ),
    precision: str = typer.Option("bf16", "--precision", help="fp16, bf16, fp8 or fp32 (fp32: parity only)."),
    checkpoint: Path | None = CheckpointOpt,
    net_config: Path | None = NetConfigOpt,
    random_weights: bool = RandomWeightsOpt,
    weights_seed: int = WeightsSeedOpt,
    batch: str | None = typer.Option(
        None,
        "--batch",
        help="Batch N (static graphs: one batch per engine; default 1), or MIN:OPT:MAX with --dynamic "
        "(default 1:1:2).",
    ),
    dynamic: bool = typer.Option(
        False,
        "--dynamic",
        help="One engine pair for a range of sizes and batches (default range: the checkpoint type's "
        "trained sizes; see --min-size/--opt-size/--max-size) instead of one size.",
    ),
    min_size: str | None = typer.Option(None, "--min-size", help="--dynamic: smallest WIDTHxHEIGHT."),
    opt_size: str | None = typer.Option(
        None, "--opt-size", help="--dynamic: size to tune for (WIDTHxHEIGHT)."
    ),
    max_size: str | None = typer.Option(None, "--max-size", help="--dynamic: largest WIDTHxHEIGHT."),
    weightless: bool = typer.Option(
        False,
        "--weightless",
        help="Strip the weights from the plans (refittable): refitted at load from the checkpoint given to "
        "decode; one plan serves every checkpoint of the architecture. Needs a CUDA GPU to build.",
    ),
    builder: str = typer.Option("auto", "--builder", help="auto, tensorrt or tensorrt-rtx."),
    engine_dir: Path = typer.Option(Path("engines"), "--engine-dir", help="Engine store."),
    export_dir: Path = typer.Option(Path("export"), "--export-dir", help="ONNX export store."),
    opt_level: int = typer.Option(3, "--opt-level", help="Builder optimization level 0-5."),
    workspace_gb: float | None = typer.Option(None, "--workspace-gb", help="Workspace pool limit in GiB."),
    target_cc: str | None = typer.Option(
        None,
        "--target-cc",
        help="TensorRT-RTX target compute capabilities, e.g. 8.6,8.9,12.0 (default: those).",
    ),
) -> None:
    """Export and build the prepare + step TensorRT engines of one bucket (or, with --dynamic, of a
    range of sizes and batches) into the engine store."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from pid_trt.buckets import check_bucket, parse_bucket
    from pid_trt.compile.build import BuildOptions
    from pid_trt.compile.engine_pair import build_pair
    from pid_trt.config import Precision

    spec = resolve_net(backbone, ckpt_type, checkpoint, net_config, random_weights, weights_seed)
    try:
        prec = Precision(precision.lower())
    except ValueError:
        raise ConfigError(f"--precision {precision!r}: expected fp16, bf16, fp8 or fp32") from None
    if weightless and prec is Precision.FP8:
        raise ConfigError(
            "--weightless --precision fp8: FP8 scales are calibrated per checkpoint, so an fp8 plan cannot "
            "serve other checkpoints; build it per checkpoint (without --weightless)"
        )
    shape_range = None
    if dynamic:
        from pid_trt.buckets import parse_range

        if res is not None or size is not None:
            raise ConfigError(
                "--dynamic builds a range: give --min-size/--opt-size/--max-size, not --res/--size"
            )
        if prec is Precision.FP8:
            raise ConfigError(
                "--dynamic --precision fp8: not supported; build static fp8 engines (--size WxH)"
            )
        shape_range = parse_range(min_size, opt_size, max_size, parse_batch(batch or "1:1:2"), spec.preset)
        bucket = shape_range.opt_bucket
    else:
        if min_size or opt_size or max_size:
            raise ConfigError("--min-size/--opt-size/--max-size need --dynamic")
        bucket = parse_bucket(res, size)
    if prec is Precision.FP8:
        from pid_trt.compile.quantize import calibration_for_bucket, require_modelopt

        require_modelopt()
        cal = calibration_for_bucket(spec.config, bucket.height, bucket.width)
        warn(
            f"fp8: the step graph is quantized with ModelOpt before export, calibrated on {cal.num_samples} "
            f"seeded fp32 decodes at {cal.width}x{cal.height} (the slow part of an fp8 export on a CPU)"
        )
    note = check_bucket(bucket, spec.preset) if shape_range is None else None
    if note:
        warn(note)
    if prec is Precision.FP32:
        warn("fp32 engines use decomposable (unfused) attention, O(tokens^2) memory: for parity checks only")
    batch_range = shape_range.batch if shape_range is not None else parse_batch(batch or "1")
    if batch_range[0] != batch_range[2] and shape_range is None:
        raise ConfigError(
            f"--batch {batch}: the exporter writes static-batch graphs, so an engine serves one batch; "
            "build one engine pair per batch (--batch N), or one pair for a batch range with --dynamic"
        )
    targets = tuple(c.strip() for c in target_cc.split(",") if c.strip()) if target_cc else ()
    options = BuildOptions(
        precision=prec,
        optimization_level=opt_level,
        workspace_bytes=int(workspace_gb * 2**30) if workspace_gb else None,
        compute_capabilities=targets,
        batch_range=batch_range,
        decomposable_attention=prec is Precision.FP32,
        weightless=weightless,  # the weights to strip come per graph from the export (build_pair)
    )
    console = Console(stderr=True)
    start = time.perf_counter()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        phase_task: dict[str, int] = {}

        def on_phase(name: str) -> None:
            for t in phase_task.values():
                progress.update(t, completed=1, total=1)
            label = "export ONNX (or reuse)" if name == "export" else f"build {name} engine"
            phase_task[name] = progress.add_task(label, total=None)
            if not console.is_terminal:  # logs and CI: one plain line per phase
                typer.echo(f"[{time.perf_counter() - start:7.1f} s] {label}", err=True)

        result = build_pair(
            spec, bucket, prec, batch_range[0], options, engine_dir=engine_dir, export_dir=export_dir,
            flavour=builder, progress=lambda graph: _RichProgress(progress, graph), on_phase=on_phase,
            shape_range=shape_range,
        )  # fmt: skip
    elapsed = time.perf_counter() - start

    state = "exported" if result.exported else "reused"
    typer.echo(f"export ({state}): {result.export_folder} [{result.export_seconds:.1f} s]")
    what = f"{bucket.name} batch {batch_range[0]}" if shape_range is None else f"dynamic {shape_range.name}"
    what += " weightless" if weightless else ""
    table = Table(title=f"{spec.name} {what} {prec.value}")
    table.add_column("graph")
    table.add_column(f"engine (in {engine_dir})", overflow="fold")
    for col in ("size", "build", "attention", "state"):
        table.add_column(col, no_wrap=True)
    for g in result.engines:
        st = "built" + (" (replaced stale)" if g.replaced else "") if g.built else "reused"
        table.add_row(
            g.graph, g.path.name, _mib(g.plan_bytes), f"{g.build_seconds:.1f} s" if g.built else "-",
            f"{g.attention_layers} fused" if g.attention_layers else "-", st,
        )  # fmt: skip
    out = Console()
    if not out.is_terminal:  # logs / pipes: room for whole engine file names (rich assumes 80 columns)
        out = Console(width=200)
    out.print(table)
    total = sum(g.plan_bytes for g in result.engines)
    typer.echo(f"total {_mib(total)}; wall {elapsed:.1f} s; peak RSS {_mib(_peak_rss())}")
