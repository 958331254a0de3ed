"""``pidtrt verify``: prove a backend (engine, ONNX graph, reduced-precision model) against the
reference, per sampler step and on the final image, with Polygraphy's comparison functions.

Exit codes: 0 every bounded figure inside its bound; 1 a figure outside (one line names it);
2 bad options or inputs; 3 an environment problem (I/O, missing package); 4 the pair cannot
run on this machine (one line says which side and why, e.g. tensorrt without a GPU).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import NoReturn

import typer

from pid_trt.cli.errors import cli_errors, warn
from pid_trt.cli.options import EngineDir, ExportDir, with_net
from pid_trt.options import NetOptions

#: A bounded figure is outside its bound.
EXIT_FAIL = 1
#: The reference or the candidate cannot run on this machine.
EXIT_CANNOT_RUN = 4


@cli_errors
@with_net
def verify(
    backend: str = typer.Option(
        ..., "--backend", help="Candidate NAME[:PRECISION], e.g. onnxruntime:fp16, tensorrt:bf16."
    ),
    against: str = typer.Option("torch:fp32", "--against", help="Reference NAME[:PRECISION]."),
    net: NetOptions = None,  # type: ignore[assignment] - the model options (cli.options.with_net)
    res: int | None = typer.Option(None, "--res", help="Square output size in pixels (random latents)."),
    size: str | None = typer.Option(
        None, "--size", help="Output WxH (random latents, or a latent's in-between size)."
    ),
    latents: list[Path] = typer.Option([], "--latents", help="Latent file(s) to decode (repeat the option)."),
    seeds: int = typer.Option(
        1, "--seeds", min=1, help="Noise seeds per input (random latents: also their seeds)."
    ),
    batch: int = typer.Option(1, "--batch", min=1, help="Batch of the random latents."),
    steps: int = typer.Option(4, "--steps", min=1, help="Sampling steps (4 = the released sampler)."),
    device: str = typer.Option(
        "cpu", "--device", help="Device of the torch / onnxruntime sides (tensorrt: cuda)."
    ),
    engine_dir: EngineDir = Path("engines"),
    export_dir: ExportDir = Path("export"),
    against_export_dir: Path | None = typer.Option(
        None, "--against-export-dir", help="ONNX store of the reference (default: --export-dir)."
    ),
    layers: bool = typer.Option(
        False,
        "--layers",
        help="Also compare the step graph layer by layer with the fp32 graph (onnxruntime).",
    ),
    report: Path | None = typer.Option(
        None, "--report", help="Write report.md, report.json, steps.png, worst_crop.png here."
    ),
) -> None:
    """Compare a candidate backend with a reference per step and on the image; exit 1 if a figure is out of bound."""
    from pid_trt.errors import BackendUnavailableError
    from pid_trt.verify.inputs import verify_inputs
    from pid_trt.verify.metrics import polygraphy_compare
    from pid_trt.verify.pairs import PairRequest, pair_cannot_run, resolve_side
    from pid_trt.verify.report import text_table
    from pid_trt.verify.session import verify_pair

    polygraphy_compare()  # a missing Polygraphy is an environment error before any work
    cand = resolve_side(backend, device, "--backend", engine_dir, export_dir)
    ref = resolve_side(against, device, "--against", engine_dir, against_export_dir or export_dir)
    pair = f"{cand.label} against {ref.label}"
    for moved in dict.fromkeys(r.moved for r in (cand, ref) if r.moved):
        warn(moved)
    reason = pair_cannot_run(cand, ref, layers)
    if reason:
        _cannot_run(pair, reason)
    spec = net.resolve()
    inputs = verify_inputs(spec, latents, res, size, seeds, batch)
    request = PairRequest(spec, ref, cand, device, steps)
    try:
        run = verify_pair(
            request, inputs, layers=layers, on_input=lambda n: typer.echo(f"verify: {n}", err=True)
        )
    except BackendUnavailableError as exc:
        _cannot_run(pair, str(exc))
    typer.echo(f"{pair} ({spec.name}, {len(inputs)} input(s), {steps} steps, {run.seconds:.1f} s)")
    typer.echo(text_table(run.results, run.bounds, run.checks))
    if run.layers_text:
        typer.echo("\n" + run.layers_text)
    if report is not None:
        written, plot_note = run.write(report, shlex.join(["pidtrt", *sys.argv[1:]]))
        if plot_note:
            warn(plot_note)
        typer.echo(f"report: {', '.join(str(p) for p in written)}")
    if run.failed:
        more = f" (and {len(run.failed) - 1} more)" if len(run.failed) > 1 else ""
        typer.echo(f"FAIL: {run.failed[0].describe()}{more}", err=True)
        raise typer.Exit(EXIT_FAIL)
    typer.echo(f"PASS: {len(run.checks)} bounded figure(s) inside their bounds")


def _cannot_run(pair: str, reason: str) -> NoReturn:
    typer.echo(f"cannot run here: {pair}: {reason}", err=True)
    raise typer.Exit(EXIT_CANNOT_RUN)
