"""``pidtrt export``: torch -> ONNX (prepare.onnx + step.onnx) for one bucket, or with
``--dynamic`` for a range of sizes and batches, into the export store."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from pid_trt.cli.errors import cli_errors, warn
from pid_trt.cli.flags import MaxSize, MinSize, OptSize
from pid_trt.cli.options import ExportDir, OutputSize, Res, with_net
from pid_trt.options import NetOptions
from pid_trt.stores.listing import mebibytes


@cli_errors
@with_net
def export(
    net: NetOptions = None,  # type: ignore[assignment] - the model options (cli.options.with_net)
    res: Res = None,
    size: OutputSize = None,
    precision: str = typer.Option(
        "fp32",
        "--precision",
        help="fp32, fp16, bf16 or fp8 (weights and matmuls; I/O stays fp32; fp8 needs the fp8 extra).",
    ),
    batch: int = typer.Option(1, "--batch", min=1, help="Batch size (static in the graphs)."),
    dynamic: bool = typer.Option(
        False,
        "--dynamic",
        help="One pair of graphs with dynamic batch, height and width (default range: the checkpoint "
        "type's trained sizes; see --min-size/--opt-size/--max-size/--batch-range).",
    ),
    min_size: MinSize = None,
    opt_size: OptSize = None,
    max_size: MaxSize = None,
    batch_range: str = typer.Option("1:1:2", "--batch-range", help="--dynamic: batch MIN:OPT:MAX."),
    refittable: bool = typer.Option(
        False,
        "--refittable",
        help="Keep every parameter as one initializer named by its checkpoint key (for weightless plans).",
    ),
    export_dir: ExportDir = Path("export"),
    opset: int = typer.Option(23, "--opset", help="ONNX opset (>= 23: fused Attention op)."),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Also run onnx.checker (by path, external data) and the TensorRT(-RTX) ONNX parser.",
    ),
) -> None:
    """Export prepare.onnx and step.onnx for one resolution bucket (reused when already exported)."""
    from pid_trt.compile.export import ensure_export
    from pid_trt.compile.plan import plan_export
    from pid_trt.stores.keys import ExportKey

    spec = net.resolve()
    plan = plan_export(
        spec, precision=precision, res=res, size=size, batch=batch, dynamic=dynamic, min_size=min_size,
        opt_size=opt_size, max_size=max_size, batch_range=batch_range,
    )  # fmt: skip
    for note in plan.notes:
        warn(note)
    start = time.perf_counter()
    key = ExportKey.for_spec(
        spec, plan.bucket, plan.precision, plan.batch, opset, plan.shape_range, refittable
    )
    result = ensure_export(
        spec, key, export_dir,
        on_export=lambda key: typer.echo(
            f"exporting {spec.name} {plan.describe()} {key.precision.value} (opset {opset}) ..."
        ),
    )  # fmt: skip
    _print_export(spec, plan, key, result, time.perf_counter() - start)
    if verify:
        _verify(result.folder)


def _print_export(spec, plan, key, result, elapsed: float) -> None:
    """The export folder, its files and graphs, and the totals."""
    from pid_trt.buckets import latent_shape
    from pid_trt.resources import peak_rss_bytes

    bucket, batch, shape_range = plan.bucket, plan.batch, plan.shape_range
    lh, lw = latent_shape(spec.config, bucket)
    state = "exported" if result.built else "cached"
    typer.echo(f"{state}: {result.folder}")
    files = result.manifest.get("build", {}).get("files", {})
    for name, info in sorted(files.items()):
        typer.echo(f"  {name:<22} {mebibytes(int(info['bytes'])):>14}  sha256 {info['sha256'][:16]}")
    graphs = result.manifest.get("build", {}).get("graphs", {})
    for name, g in sorted(graphs.items()):
        typer.echo(
            f"  {name}: {g['nodes']} nodes, attention {g['attention']} x{g['attention_nodes']}, "
            f"largest initializer {mebibytes(int(g['largest_initializer_bytes']))}"
        )
    where = f"bucket {bucket.name} (latent {lw}x{lh} cells), batch {batch}"
    if shape_range is not None:
        where = f"range {shape_range.name} (opt {bucket.name} batch {batch})"
    typer.echo(
        f"{where}, {key.precision.value}, "
        f"total {mebibytes(result.size_bytes)}; wall {elapsed:.1f} s, peak RSS {mebibytes(peak_rss_bytes())}"
    )


def _verify(folder: Path) -> None:
    """onnx.checker and the TensorRT(-RTX) parser on each graph of an export folder."""
    from pid_trt.compile.onnx_graph import check_model_by_path, trt_parse

    for name in ("prepare.onnx", "step.onnx"):
        start = time.perf_counter()
        check_model_by_path(folder / name)
        report = trt_parse(folder / name)
        typer.echo(
            f"verified {name}: onnx.checker OK; {report.module} parse OK, {report.layers} layers, "
            f"{report.attention_layers} fused attention [{time.perf_counter() - start:.1f} s]"
        )
