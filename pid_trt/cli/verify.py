"""``pidtrt verify``: prove a backend (engine, ONNX graph, reduced-precision model) against the
reference, per sampler step and on the final image, with Polygraphy's comparison functions.

Exit codes: 0 every bounded figure inside its bound; 1 a figure outside (one line names it);
2 bad options or inputs; 3 an environment problem (I/O, missing package); 4 the pair cannot
run on this machine (one line says which side and why, e.g. tensorrt without a GPU).
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

import typer

from pid_trt.cli.errors import cli_errors, warn
from pid_trt.cli.options import (
    Backbone,
    Checkpoint,
    CkptType,
    EngineDir,
    ExportDir,
    NetConfigFile,
    RandomWeights,
    WeightsSeed,
)

#: A bounded figure is outside its bound.
EXIT_FAIL = 1
#: The reference or the candidate cannot run on this machine.
EXIT_CANNOT_RUN = 4
#: Distributions whose versions the report's header records (those installed).
REPORT_PACKAGES = (
    "pid-trt",
    "torch",
    "onnxruntime",
    "polygraphy",
    "tensorrt-rtx-cu12-bindings",
    "tensorrt-cu12",
)


def _inputs(spec: Any, latents: list[Path], res: int | None, size: str | None, seeds: int, batch: int):
    """(inputs, height, width): the user's latent files x seeds, or seeded random latents."""

    from pid_trt.backends.base import Conditioning
    from pid_trt.buckets import output_size, parse_bucket
    from pid_trt.errors import ConfigError, InputFileError
    from pid_trt.io import read_latent_file, sample_latent
    from pid_trt.netspec import stand_in_caption
    from pid_trt.verify.pairs import VerifyInput

    config = spec.config
    out = []
    if latents:
        if res is not None:
            raise ConfigError(
                "--res with --latents: the latent fixes the size (use --size for in-between sizes)"
            )
        for path in latents:
            lat = read_latent_file(path, config)
            height, width = output_size(config, lat.latent_hw, size)
            caption = lat.caption
            if caption is None:
                if spec.needs_caption:
                    raise InputFileError(
                        f"latent file {path} has no caption_embedding: add one as tensor `caption_embedding` "
                        f"[B, {config.txt_max_length}, {config.txt_embed_dim}]"
                    )
                caption = stand_in_caption(spec, lat.batch, 0)
            cond = Conditioning(lat.latent, caption, lat.degrade_sigma, height, width)
            out += [VerifyInput(f"{Path(path).name} seed {s}", cond, s) for s in range(seeds)]
        return out
    if res is None and size is None:
        raise ConfigError("give --res N, --size WxH or --latents FILE: what to decode")
    bucket = parse_bucket(res, size)
    for s in range(seeds):
        lat = sample_latent(config, batch, bucket.height, bucket.width, seed=s)
        cond = Conditioning(lat.latent, lat.caption, lat.degrade_sigma, bucket.height, bucket.width)
        out.append(VerifyInput(f"random latent seed {s}", cond, s))
    return out


@cli_errors
def verify(
    backend: str = typer.Option(
        ..., "--backend", help="Candidate NAME[:PRECISION], e.g. onnxruntime:fp16, tensorrt:bf16."
    ),
    against: str = typer.Option("torch:fp32", "--against", help="Reference NAME[:PRECISION]."),
    backbone: Backbone = None,
    ckpt_type: CkptType = None,
    checkpoint: Checkpoint = None,
    net_config: NetConfigFile = None,
    random_weights: RandomWeights = False,
    weights_seed: WeightsSeed = 0,
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
    from pid_trt.errors import BackendUnavailableError, ConfigError
    from pid_trt.netspec import resolve_net
    from pid_trt.sampling import TIMESCALE
    from pid_trt.verify.layers import worst_step_layers
    from pid_trt.verify.metrics import polygraphy_compare
    from pid_trt.verify.pairs import PairRequest, Side, cannot_run, checks, run_pair
    from pid_trt.verify.report import build_report, text_table, write_report
    from pid_trt.versions import package_versions

    polygraphy_compare()  # a missing Polygraphy is an environment error before any work
    cand, ref = Side.parse(backend, "--backend", device), Side.parse(against, "--against", device)
    pair = f"{cand.label} against {ref.label}"
    if layers and cand.name == "torch":
        raise ConfigError("--layers compares ONNX step graphs: the candidate must be onnxruntime")
    for side, role in ((cand, "candidate"), (ref, "reference")):
        reason = cannot_run(side, device)
        if reason is None and layers and side is cand and cand.name == "tensorrt":
            reason = (
                "--layers for TensorRT engines is not implemented (no GPU here to run Polygraphy's TrtRunner)"
            )
        if reason:
            typer.echo(f"cannot run here: {pair}: {role} {side.label}: {reason}", err=True)
            raise typer.Exit(EXIT_CANNOT_RUN)
    spec = resolve_net(backbone, ckpt_type, checkpoint, net_config, random_weights, weights_seed)
    inputs = _inputs(spec, latents, res, size, seeds, batch)
    request = PairRequest(spec, ref, cand, device, steps, engine_dir, export_dir, against_export_dir)
    start = time.perf_counter()
    try:
        results = run_pair(request, inputs, on_input=lambda name: typer.echo(f"verify: {name}", err=True))
    except BackendUnavailableError as exc:
        typer.echo(f"cannot run here: {pair}: {exc}", err=True)
        raise typer.Exit(EXIT_CANNOT_RUN) from None
    bounds = request.bounds
    found = [c for r in results for c in checks(r, bounds)]
    typer.echo(
        f"{pair} ({spec.name}, {len(inputs)} input(s), {steps} steps, {time.perf_counter() - start:.1f} s)"
    )
    typer.echo(text_table(results, bounds, found))
    layer_rep, layer_text = None, None
    if layers:
        layer_rep, layer_text = worst_step_layers(request, inputs, results, TIMESCALE)
        typer.echo("\n" + layer_text)
    if report is not None:
        c0 = inputs[0].cond
        header = {
            "command": shlex.join(["pidtrt", *sys.argv[1:]]),
            "net": spec.name,
            "weights": str(spec.checkpoint) if spec.checkpoint else f"random:{spec.weights_seed}",
            "reference": ref.label,
            "candidate": cand.label,
            "device": device,
            "size": f"{c0.width}x{c0.height}",
            "steps": steps,
            "versions": package_versions(REPORT_PACKAGES),
        }
        rep = build_report(header=header, results=results, bounds=bounds, checks=found, layers=layer_rep)
        written, files = write_report(report, rep, results, bounds, found, layer_text)
        if files["plot_note"]:
            warn(files["plot_note"])
        typer.echo(f"report: {', '.join(str(p) for p in written)}")
    failed = [c for c in found if not c.ok]
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        typer.echo(f"FAIL: {failed[0].describe()}{more}", err=True)
        raise typer.Exit(EXIT_FAIL)
    typer.echo(f"PASS: {len(found)} bounded figure(s) inside their bounds")
