"""``pidtrt bench``: latency / throughput / memory per backend x size x batch, or ``--estimate``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from pid_trt.backends.registry import BACKENDS
from pid_trt.buckets import parse_size
from pid_trt.cli.bench_pipeline import with_pipeline
from pid_trt.cli.bench_server import Concurrency, Requests, Server, ServerOutput, bench_server
from pid_trt.cli.errors import cli_errors, warn
from pid_trt.cli.options import (
    RUNTIME_PARAMS,
    TILING_PARAMS,
    backend_names,
    given_flags,
    option_bundle,
    with_net,
    with_tile_options,
)
from pid_trt.cli.outputs import with_output
from pid_trt.cli.panels import IO_PANEL, RUNTIME_PANEL, SIZE_PANEL
from pid_trt.errors import ConfigError
from pid_trt.io.encoders import OutputOptions
from pid_trt.options import NetOptions, RuntimeOptions
from pid_trt.tiling.options import TileOptions


def _sizes(size: list[str], res: list[int]) -> list[tuple[int, int]]:
    out = [parse_size(s) for s in size] + [(r, r) for r in res]
    if not out:
        raise ConfigError("no size given: pass --size WxH or --res N (repeatable)")
    return list(dict.fromkeys(out))


Size = Annotated[
    list[str], typer.Option("--size", help="Output WxH in pixels (repeatable).", rich_help_panel=SIZE_PANEL)
]
Res = Annotated[
    list[int],
    typer.Option("--res", help="Square output size in pixels (repeatable).", rich_help_panel=SIZE_PANEL),
]
Batch = Annotated[
    list[int], typer.Option("--batch", help="Batch size (repeatable).", rich_help_panel=SIZE_PANEL)
]
Backend = Annotated[
    list[str],
    typer.Option(
        "--backend",
        help=f"{backend_names()}; NAME[:PRECISION]\\[@DEVICE], e.g. {list(BACKENDS)[-1]}:fp8 (repeatable).",
        rich_help_panel=RUNTIME_PANEL,
    ),
]
Device = Annotated[
    str,
    typer.Option(
        "--device", help="cpu, cuda or auto (cuda when torch sees a GPU).", rich_help_panel=RUNTIME_PANEL
    ),
]
Steps = Annotated[
    int, typer.Option("--steps", min=1, help="Sampler steps per decode.", rich_help_panel=RUNTIME_PANEL)
]
Warmup = Annotated[
    int, typer.Option("--warmup", min=0, help="Untimed decodes before timing.", rich_help_panel=RUNTIME_PANEL)
]
Runs = Annotated[
    int, typer.Option("--runs", min=1, help="Timed decodes per case.", rich_help_panel=RUNTIME_PANEL)
]
Hoist = Annotated[
    bool,
    typer.Option(
        "--hoist/--no-hoist",
        help="Run the per-decode work once (default) or every step.",
        rich_help_panel=RUNTIME_PANEL,
    ),
]
CompareHoist = Annotated[
    bool,
    typer.Option(
        "--compare-hoist",
        help="Measure hoisted and not, where the backend can.",
        rich_help_panel=RUNTIME_PANEL,
    ),
]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads", min=1, help="torch intra-op threads (default: torch's).", rich_help_panel=RUNTIME_PANEL
    ),
]
JsonPath = Annotated[
    Path | None, typer.Option("--json", help="Write the records as JSON here.", rich_help_panel=IO_PANEL)
]
MarkdownPath = Annotated[
    Path | None, typer.Option("--markdown", help="Also write the table here.", rich_help_panel=IO_PANEL)
]
PlotPath = Annotated[
    Path | None,
    typer.Option("--plot", help="Write latency / throughput plots (PNG) here.", rich_help_panel=IO_PANEL),
]
Title = Annotated[
    str | None, typer.Option("--title", help="Heading of the markdown report.", rich_help_panel=IO_PANEL)
]
Estimate = Annotated[
    bool,
    typer.Option(
        "--estimate", help="Print the cost-model table only; run nothing.", rich_help_panel=IO_PANEL
    ),
]
Timeout = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        help="Seconds per case before it counts as failed (--server: per request).",
        rich_help_panel=RUNTIME_PANEL,
    ),
]


def _runtime_template(
    precision: str | None, engine_dir: Path, export_dir: Path, cuda_graph: bool
) -> RuntimeOptions:
    """The runtime options every ``--backend`` of a bench run shares (device and hoisting: bench's own)."""
    return RuntimeOptions(
        precision=precision, engine_dir=engine_dir, export_dir=export_dir, cuda_graph=cuda_graph
    )


#: The shared runtime options but ``--backend`` (repeatable here), ``--device`` (``auto`` here) and
#: ``--no-hoist`` (``--hoist/--no-hoist``, ``--compare-hoist`` here).
with_bench_runtime = option_bundle(
    "runtime",
    tuple(p for p in RUNTIME_PARAMS if p.name not in ("backend", "device", "no_hoist")),
    _runtime_template,
)


@cli_errors
@with_net
@with_bench_runtime
@with_tile_options
@with_output
@with_pipeline
def bench(
    size: Size = (),
    res: Res = (),
    batch: Batch = (1,),
    backend: Backend = ("torch",),
    device: Device = "auto",
    steps: Steps = 4,
    warmup: Warmup = 1,
    runs: Runs = 5,
    hoist: Hoist = True,
    compare_hoist: CompareHoist = False,
    threads: Threads = None,
    json_path: JsonPath = None,
    markdown_path: MarkdownPath = None,
    plot_path: PlotPath = None,
    title: Title = None,
    estimate: Estimate = False,
    timeout: Timeout = None,
    server: Server = None,
    concurrency: Concurrency = (1,),
    requests: Requests = 20,
    served: ServerOutput = "image",
    tiling: TileOptions = None,  # type: ignore[assignment] - --tiles, --tile-size ... (with_tile_options)
    pipe: dict = None,  # type: ignore[assignment] - --pipeline, --simulate-device-ms ... (with_pipeline)
    encoding: OutputOptions = None,  # type: ignore[assignment] - --png-level, --quality ... (with_output)
    *,
    net: NetOptions,
    runtime: RuntimeOptions,
) -> None:
    """Benchmark backends (each case in a fresh process), or print the cost model (--estimate), or
    load-test a server (--server). With tiling options (--tiles 2x2, --tile-size ...), each case is
    measured in one shot and as those options plan it: tiled rows beside one-shot rows. --pipeline:
    the host path around the network, per stage, against a real or simulated device."""
    sizes = _sizes(size, res)
    if pipe["pipeline"]:
        from pid_trt.cli.bench_pipeline import bench_pipeline

        return bench_pipeline(net, sizes, pipe, encoding, json_path, markdown_path, title)
    tiled = given_flags(TILING_PARAMS, tiling.keywords())
    if tiled and (server is not None or estimate):
        raise ConfigError(
            f"{', '.join(tiled)} with {'--server' if server else '--estimate'}: tiling options measure local decodes"
        )
    if server is not None:
        bench_server(server, sizes, concurrency, requests, timeout, json_path, markdown_path, title, served)
        return
    if estimate:
        _estimate(net, sizes, batch, steps)
        return

    from pid_trt.bench.report import render_markdown, write_reports
    from pid_trt.bench.session import BenchSettings, plan_cases, run_bench

    net = net.absolute()
    hoists = (True, False) if compare_hoist else (hoist,)
    template = dataclasses.replace(runtime, device=device)
    cases = plan_cases(backend, template, sizes, batch, hoists, steps, tiling if tiled else None)
    for moved in dict.fromkeys(c.runtime.moved for c in cases if c.runtime.moved):
        warn(moved)
    settings = BenchSettings(net, warmup, runs, threads, net.weights_seed, timeout)

    def progress(case, i, n):
        r = case.runtime
        how = " " + case.tiling.describe() if case.tiling else ""
        typer.echo(f"[{i + 1}/{n}] {r.name} {r.precision.value}@{r.device} {case.width}x{case.height} "
                   f"batch {case.batch}{'' if case.hoist else ' no-hoist'}{how}", err=True)  # fmt: skip

    records = run_bench(cases, settings, progress)
    text = render_markdown(records, title)
    typer.echo(text)
    meta = {"net": net.to_dict(), "command": "pidtrt bench", "warmup": warmup, "runs": runs}
    write_reports(records, text, meta, json_path=json_path, markdown_path=markdown_path, plot_path=plot_path)


def _estimate(net: NetOptions, sizes: list[tuple[int, int]], batch: list[int], steps: int) -> None:
    """``--estimate``: the cost-model table of each size x batch."""
    from pid_trt.costmodel import render_markdown as cost_table

    if net.backbone is None:
        raise ConfigError("--estimate needs --backbone (a preset)")
    for h, w in sizes:
        for b in batch:
            typer.echo(cost_table(net.backbone, net.ckpt_type, h, w, b, steps))
