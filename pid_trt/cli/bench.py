"""``pidtrt bench``: latency / throughput / memory per backend x size x batch, or ``--estimate``."""

from __future__ import annotations

from pathlib import Path

import typer

from pid_trt.buckets import parse_size
from pid_trt.cli.errors import cli_errors
from pid_trt.cli.options import (
    TILING_PARAMS,
    EngineDir,
    ExportDir,
    PrecisionName,
    given_flags,
    with_net,
    with_tiling,
)
from pid_trt.errors import ConfigError
from pid_trt.options import NetOptions


def _sizes(size: list[str], res: list[int]) -> list[tuple[int, int]]:
    out = [parse_size(s) for s in size] + [(r, r) for r in res]
    if not out:
        raise ConfigError("no size given: pass --size WxH or --res N (repeatable)")
    return list(dict.fromkeys(out))


@cli_errors
@with_net
@with_tiling
def bench(
    net: NetOptions,
    size: list[str] = typer.Option([], "--size", help="Output WxH in pixels (repeatable)."),
    res: list[int] = typer.Option([], "--res", help="Square output size in pixels (repeatable)."),
    batch: list[int] = typer.Option([1], "--batch", help="Batch size (repeatable)."),
    backend: list[str] = typer.Option(
        ["torch"],
        "--backend",
        help="torch, torch-compile, onnxruntime, tensorrt; NAME[:PRECISION][@DEVICE], e.g. tensorrt:fp8 (repeatable).",
    ),
    dtype: PrecisionName = None,
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto (cuda when torch sees a GPU)."),
    steps: int = typer.Option(4, "--steps", min=1, help="Sampler steps per decode."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Untimed decodes before timing."),
    runs: int = typer.Option(5, "--runs", min=1, help="Timed decodes per case."),
    hoist: bool = typer.Option(
        True, "--hoist/--no-hoist", help="Run the per-decode work once (default) or every step."
    ),
    compare_hoist: bool = typer.Option(
        False, "--compare-hoist", help="Measure hoisted and not, where the backend can."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="torch intra-op threads (default: torch's)."
    ),
    json_path: Path | None = typer.Option(None, "--json", help="Write the records as JSON here."),
    markdown_path: Path | None = typer.Option(None, "--markdown", help="Also write the table here."),
    plot_path: Path | None = typer.Option(
        None, "--plot", help="Write latency / throughput plots (PNG) here."
    ),
    title: str | None = typer.Option(None, "--title", help="Heading of the markdown report."),
    estimate: bool = typer.Option(False, "--estimate", help="Print the cost-model table only; run nothing."),
    engine_dir: EngineDir = Path("engines"),
    export_dir: ExportDir = Path("export"),
    timeout: float | None = typer.Option(
        None, "--timeout", help="Seconds per case before it counts as failed (--server: per request)."
    ),
    server: str | None = typer.Option(
        None, "--server", help="Load-test a running `pidtrt serve` at this URL instead (http://HOST:PORT)."
    ),
    concurrency: list[int] = typer.Option(
        [1], "--concurrency", help="--server: clients sending at once (repeatable: one test each)."
    ),
    requests: int = typer.Option(20, "--requests", min=1, help="--server: requests per test."),
    tiling: dict = None,  # type: ignore[assignment] - --tiles, --tile-size ... (with_tiling)
) -> None:
    """Benchmark backends (each case in a fresh process), or print the cost model (--estimate), or
    load-test a server (--server). With tiling options (--tiles 2x2, --tile-size ...), each case is
    measured in one shot and as those options plan it: tiled rows beside one-shot rows."""
    sizes = _sizes(size, res)
    tiled = given_flags(TILING_PARAMS, tiling)
    if tiled and (server is not None or estimate):
        raise ConfigError(
            f"{', '.join(tiled)} with {'--server' if server else '--estimate'}: tiling options measure local decodes"
        )
    if server is not None:
        _bench_server(server, sizes, concurrency, requests, timeout, json_path, markdown_path, title)
        return
    if estimate:
        from pid_trt.costmodel import render_markdown as cost_table

        if net.backbone is None:
            raise ConfigError("--estimate needs --backbone (a preset)")
        for h, w in sizes:
            for b in batch:
                typer.echo(cost_table(net.backbone, net.ckpt_type, h, w, b, steps))
        return

    from pid_trt.bench.report import render_markdown, write_reports
    from pid_trt.bench.session import BenchSettings, plan_cases, run_bench

    net = net.absolute()
    hoists = (True, False) if compare_hoist else (hoist,)
    cases = plan_cases(backend, dtype, device, sizes, batch, hoists, steps, tiling if tiled else None)
    settings = BenchSettings(net, warmup, runs, engine_dir, export_dir, threads, net.weights_seed, timeout)

    def progress(case, i, n):
        t = case.target
        how = " " + " ".join(f"{k}={v}" for k, v in case.tiling) if case.tiling else ""
        typer.echo(f"[{i + 1}/{n}] {t.backend} {t.precision.value}@{t.device} {case.width}x{case.height} "
                   f"batch {case.batch}{'' if case.hoist else ' no-hoist'}{how}", err=True)  # fmt: skip

    records = run_bench(cases, settings, progress)
    text = render_markdown(records, title)
    typer.echo(text)
    meta = {"net": net.to_dict(), "command": "pidtrt bench", "warmup": warmup, "runs": runs}
    write_reports(records, text, meta, json_path=json_path, markdown_path=markdown_path, plot_path=plot_path)


def _bench_server(
    url: str,
    sizes: list[tuple[int, int]],
    concurrency: list[int],
    requests: int,
    timeout: float | None,
    json_path: Path | None,
    markdown_path: Path | None,
    title: str | None,
) -> None:
    """``--server``: one load test per size x concurrency; table on stdout, JSON / Markdown files."""
    from pid_trt.serve.loadtest import dump_document, render_markdown, run_load

    if any(c < 1 for c in concurrency):
        raise ConfigError(f"--concurrency {concurrency}: expected integers >= 1")
    records = []
    for height, width in sizes:
        for c in dict.fromkeys(concurrency):
            typer.echo(f"load test {width}x{height}, concurrency {c}, {requests} requests -> {url}", err=True)
            records.append(run_load(url, height, width, c, requests, timeout_s=timeout or 600.0))
    text = render_markdown(records, title)
    typer.echo(text)
    if json_path is not None:
        meta = {"command": "pidtrt bench --server", "url": url, "requests": requests}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(dump_document(records, meta))
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(text)
