"""``pidtrt build``: export (or reuse an export) and build both TensorRT engines of one bucket,
or (``--dynamic``) one pair for a range of sizes and batches; ``--weightless`` strips the weights."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import typer

from pid_trt.cli.errors import cli_errors, warn
from pid_trt.cli.flags import MaxSize, MinSize, OptSize
from pid_trt.cli.options import EngineDir, ExportDir, OutputSize, Res, with_net
from pid_trt.options import NetOptions


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


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
@with_net
def build(
    net: NetOptions = None,  # type: ignore[assignment] - the model options (cli.options.with_net)
    res: Res = None,
    size: OutputSize = None,
    precision: str = typer.Option("bf16", "--precision", help="fp16, bf16, fp8 or fp32 (fp32: parity only)."),
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
    min_size: MinSize = None,
    opt_size: OptSize = None,
    max_size: MaxSize = None,
    weightless: bool = typer.Option(
        False,
        "--weightless",
        help="Strip the weights from the plans (refittable): refitted at load from the checkpoint given to "
        "decode; one plan serves every checkpoint of the architecture. Needs a CUDA GPU to build.",
    ),
    builder: str = typer.Option("auto", "--builder", help="auto, tensorrt or tensorrt-rtx."),
    engine_dir: EngineDir = Path("engines"),
    export_dir: ExportDir = Path("export"),
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
    from pid_trt.compile.plan import plan_build

    spec = net.resolve()
    plan = plan_build(
        spec, precision=precision, res=res, size=size, batch=batch, dynamic=dynamic, min_size=min_size,
        opt_size=opt_size, max_size=max_size, weightless=weightless, target_cc=target_cc, opt_level=opt_level,
        workspace_gb=workspace_gb,
    )  # fmt: skip
    for note in plan.notes:
        warn(note)
    start = time.perf_counter()
    result = _build_with_progress(spec, plan, engine_dir, export_dir, builder, start)
    _print_result(spec, plan, result, engine_dir, weightless, time.perf_counter() - start)


def _build_with_progress(spec, plan, engine_dir: Path, export_dir: Path, builder: str, start: float):
    """Run :func:`pid_trt.compile.engine_pair.build_pair` under a rich progress display (a plain
    line per phase when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from pid_trt.compile.engine_pair import build_pair

    console = Console(stderr=True)
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

        return build_pair(
            spec, plan.bucket, plan.precision, plan.batch_range[0], plan.options, engine_dir=engine_dir,
            export_dir=export_dir, flavour=builder, progress=lambda graph: _RichProgress(progress, graph),
            on_phase=on_phase, shape_range=plan.shape_range,
        )  # fmt: skip


def _print_result(spec, plan, result, engine_dir: Path, weightless: bool, elapsed: float) -> None:
    """The export line, the table of both engines and the totals."""
    from rich.console import Console
    from rich.table import Table

    from pid_trt.resources import peak_rss_bytes

    state = "exported" if result.exported else "reused"
    typer.echo(f"export ({state}): {result.export_folder} [{result.export_seconds:.1f} s]")
    what = plan.describe() + (" weightless" if weightless else "")
    table = Table(title=f"{spec.name} {what} {plan.precision.value}")
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
    typer.echo(f"total {_mib(total)}; wall {elapsed:.1f} s; peak RSS {_mib(peak_rss_bytes(children=True))}")
