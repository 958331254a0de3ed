"""``pidtrt doctor``: one screen of what this machine can do and whether the job named runs here.

Exit 0 when the job can run here, 1 (with the reason in one line on stderr) when it cannot,
2 for bad options."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from pid_trt.backends.registry import BACKENDS
from pid_trt.cli.errors import cli_errors
from pid_trt.cli.options import (
    Backbone,
    Checkpoint,
    CkptType,
    Device,
    EngineDir,
    NetConfigFile,
    OutputSize,
    Res,
)

#: Exit code when the job named cannot run on this machine.
EXIT_CANNOT_RUN = 1

BackendOpt = Annotated[
    str,
    typer.Option(
        "--backend",
        help=f"The job's backend: NAME[:PRECISION]\\[@DEVICE], e.g. {list(BACKENDS)[-1]}:fp8 or {list(BACKENDS)[0]}@cuda.",
    ),
]
BatchOpt = Annotated[int, typer.Option("--batch", min=1, help="Images per decode.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the facts and verdicts as JSON.")]


@cli_errors
def doctor(
    backbone: Backbone = None,
    ckpt_type: CkptType = None,
    checkpoint: Checkpoint = None,
    net_config: NetConfigFile = None,
    size: OutputSize = None,
    res: Res = None,
    backend: BackendOpt = "torch",
    device: Device = None,
    batch: BatchOpt = 1,
    engine_dir: EngineDir = Path("engines"),
    as_json: JsonOpt = False,
) -> None:
    """What this machine can do (CPU, memory, torch, CUDA devices, TensorRT flavours, FP8, ONNX Runtime,
    extras, engine store) and whether the job named (--backbone, --size, --backend) can run here."""
    from pid_trt.doctor import gather, judge, resolve_job

    job = resolve_job(
        backend=backend, device=device, backbone=backbone, ckpt_type=ckpt_type, checkpoint=checkpoint,
        net_config=net_config, size=size, res=res, batch=batch, engine_dir=engine_dir,
    )  # fmt: skip
    facts = gather(engine_dir)
    report = judge(facts, job)
    if as_json:
        typer.echo(json.dumps(_as_json(facts, job, report), indent=2, default=str))
    else:
        typer.echo(_screen(job, report))
    if not report.runnable:
        typer.echo(f"error: cannot run here: {report.reason}", err=True)
        raise typer.Exit(EXIT_CANNOT_RUN)


def _screen(job, report) -> str:
    lines = ["this machine:"]
    lines += _lines(report.machine)
    what = f"{job.net}, {job.width}x{job.height} batch {job.batch}, " if job.config is not None else ""
    lines += ["", f"the job: {what}{job.label}:"]
    lines += _lines(report.job)
    lines.append("")
    lines.append("the job can run here" if report.runnable else f"the job cannot run here: {report.reason}")
    return "\n".join(lines)


def _lines(verdicts) -> list[str]:
    out = []
    for v in verdicts:
        out.append(f"  {'✓' if v.ok else '✗'} {v.message}")
        if v.fix and not v.ok:
            out.append(f"      fix: {v.fix}")
    return out


def _as_json(facts, job, report) -> dict:
    def rows(verdicts) -> list[dict]:
        return [dataclasses.asdict(v) for v in verdicts]

    job_dict = dataclasses.asdict(job)
    job_dict.pop("config", None)
    job_dict["preset"] = job.preset.name if job.preset is not None else None
    return {
        "facts": dataclasses.asdict(facts),
        "job": job_dict,
        "verdicts": {"machine": rows(report.machine), "job": rows(report.job)},
        "runnable": report.runnable,
        "reason": report.reason,
    }
