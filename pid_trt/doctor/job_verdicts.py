"""The job's lines of the doctor's screen: the backend on its device, the builder, the
precision, the weights, one shot or tiles, the memory, the engines. Pure (facts + job in,
verdicts out); the rules are listed in :mod:`pid_trt.doctor.verdicts`. A failure marked
``blocking`` means the job cannot run here.
"""

from __future__ import annotations

import json

from pid_trt.backends.registry import GraphKind
from pid_trt.config import Precision
from pid_trt.doctor.facts import EngineFacts, GpuFacts, MachineFacts
from pid_trt.doctor.job import Job
from pid_trt.doctor.rules import (
    PIP_RTX,
    PIP_TENSORRT,
    RTX_DEFAULT_TARGETS,
    Verdict,
    arch,
    auto_builder,
    fp8_ok,
    rtx_targets,
)

_GIB = float(1 << 30)
_ORT_GPU = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_WEIGHTS_FIX = 'hf download nvidia/PiD --include "checkpoints/*"  (then --checkpoint FILE)'


def job_verdicts(facts: MachineFacts, job: Job) -> tuple[Verdict, ...]:
    """Every line of the job, in screen order."""
    gpu = facts.gpu(job.device_index) if job.device_index is not None else None
    out = [_backend(facts, job, gpu)]
    if job.graph is GraphKind.PLAN:
        out += _builder(facts, job, gpu)
    if job.config is None:
        return tuple(out)
    out.append(_weights(job))
    plan, free = _plan(facts, job, gpu)
    out.append(_size(job, plan))
    out.append(_memory(job, plan, free))
    if job.graph is GraphKind.PLAN:
        out.append(_engines(facts, job, plan, gpu))
    return tuple(out)


def _backend(f: MachineFacts, job: Job, gpu: GpuFacts | None) -> Verdict:
    """Whether the backend runs its precision on its device here."""
    where = f"{job.device} ({gpu.name}, {arch(gpu.cc)})" if gpu is not None else job.device
    ok_text = f"backend {job.backend}:{job.precision.value} on {where}"

    def fail(why: str, fix: str) -> Verdict:
        return Verdict("backend", False, f"backend {job.label}: {why}", fix, blocking=True)

    if job.device.startswith("cuda"):
        if not f.gpus:
            return fail(
                "needs an NVIDIA GPU with CUDA; this machine has none", "--backend torch or onnxruntime (CPU)"
            )
        if gpu is None:
            return fail(f"this machine has {len(f.gpus)} CUDA device(s)", f"--device cuda:{f.gpus[0].index}")
    if job.graph is GraphKind.ONNX:
        if f.ort_version is None:
            return fail("ONNX Runtime is not installed", "pip install 'pid-trt[cpu]'")
        if job.device.startswith("cuda") and not any(p in f.ort_providers for p in _ORT_GPU):
            return fail("onnxruntime has no GPU provider", "pip install 'pid-trt[gpu]'")
        if job.device == "cpu" and job.precision in (Precision.BF16, Precision.FP8):
            return fail("ONNX Runtime's CPU provider has no bfloat16 kernels", "--backend onnxruntime:fp32")
    if job.graph is GraphKind.PLAN:
        if f.tensorrt.version is None and f.tensorrt_rtx.version is None:
            return fail("neither tensorrt nor tensorrt-rtx is installed", PIP_RTX)
        if job.precision is Precision.FP8 and not fp8_ok(gpu):
            assert gpu is not None
            return fail(
                f"{arch(gpu.cc)} has no FP8 tensor cores (SM 8.9 or newer)", "--backend tensorrt:bf16"
            )
    return Verdict("backend", True, ok_text, blocking=True)


def _builder(f: MachineFacts, job: Job, gpu: GpuFacts | None) -> list[Verdict]:
    """The flavour ``--builder auto`` picks here, and whether its engines run on the job's GPU."""
    builder = auto_builder(f)
    if builder is None:
        return [
            Verdict("builder", False, "no TensorRT flavour to build engines with", PIP_RTX, blocking=True)
        ]
    if gpu is None:  # no GPU: the backend line already says so; building is still possible here
        return [
            Verdict("builder", True, f"--builder auto picks {builder}: engines build here, run elsewhere")
        ]
    if builder == "tensorrt":
        return [
            Verdict(
                "builder", True, f"--builder auto picks tensorrt: builds for {arch(gpu.cc)}", blocking=True
            )
        ]
    if gpu.cc not in rtx_targets(f):
        return [
            Verdict(
                "builder", False,
                f"--builder auto picks tensorrt-rtx, which does not target {arch(gpu.cc)}: full TensorRT is needed",
                PIP_TENSORRT, blocking=True,
            )
        ]  # fmt: skip
    extra = "" if gpu.cc in _default_targets(job) else f" (build with --target-cc {gpu.cc})"
    return [
        Verdict(
            "builder",
            True,
            f"--builder auto picks tensorrt-rtx: targets {arch(gpu.cc)}{extra}",
            blocking=True,
        )
    ]


def _default_targets(job: Job) -> tuple[str, ...]:
    return ("8.9", "12.0") if job.precision is Precision.FP8 else RTX_DEFAULT_TARGETS


def _weights(job: Job) -> Verdict:
    if job.checkpoint is not None:
        sha = (job.checkpoint_sha256 or "")[:12]
        return Verdict("weights", True, f"{job.net}: checkpoint {job.checkpoint} (sha256 {sha}...)")
    if job.random_weights:
        return Verdict("weights", True, f"{job.net}: seeded random weights (a stand-in: no released weights)")
    return Verdict(
        "weights",
        False,
        f"{job.net}: no --checkpoint named: a decode needs the released weights",
        _WEIGHTS_FIX,
    )


def _plan(f: MachineFacts, job: Job, gpu: GpuFacts | None):
    """(the size plan as the Decoder would make it, the free bytes of the job's device)."""
    from pid_trt.tiling import TileOptions, envelope_for, plan

    assert job.config is not None
    free = gpu.free_bytes if gpu is not None else (f.memory_available if job.device == "cpu" else None)
    load = "fp32" if job.shares_sizes and job.device == "cpu" else None
    p = plan(
        job.config, job.height, job.width, TileOptions(), envelope=envelope_for(job.preset), batch=job.batch,
        steps=job.steps, precision=job.precision, load_precision=load, memory_free=free or None,
    )  # fmt: skip
    return p, free


def _size(job: Job, plan) -> Verdict:
    size = f"{job.width}x{job.height} batch {job.batch}"
    if plan.grid is None:
        return Verdict("size", True, f"{size}: one shot ({plan.reason})")
    g = plan.grid
    return Verdict(
        "size", True, f"{size}: {g.cols}x{g.rows} tiles of {g.tile_width}x{g.tile_height} ({plan.reason})"
    )


def _memory(job: Job, plan, free: int | None) -> Verdict:
    need = plan.cost.memory.total
    where = job.device
    if free is None:
        return Verdict("memory", True, f"needs about {need / _GIB:.1f} GiB; free memory of {where} unknown")
    text = f"needs about {need / _GIB:.1f} GiB; {where} has {free / _GIB:.1f} GiB free"
    if need <= free:
        return Verdict("memory", True, text, blocking=True)
    fix = "a smaller --size, --batch 1, or a lower precision (--backend NAME:bf16)"
    return Verdict("memory", False, f"does not fit: {text}", fix, blocking=True)


def _engines(f: MachineFacts, job: Job, plan, gpu: GpuFacts | None) -> Verdict:
    """Whether the store holds a usable engine pair for every shape the plan runs."""
    assert job.config is not None
    net = json.loads(job.config.to_json())
    missing, found, stale = [], [], []
    for need in plan.engines:
        pair, bad = _find_pair(f.store.engines, net, job, need.height, need.width, need.batch, gpu)
        if pair:
            found.append(f"{need.width}x{need.height} batch {need.batch} ({', '.join(pair)})")
        else:
            stale += bad
            cc = (
                gpu.cc
                if gpu is not None
                and gpu.cc not in _default_targets(job)
                and auto_builder(f) == "tensorrt-rtx"
                else None
            )
            missing.append(job.build_command(need.height, need.width, need.batch, targets=cc))
    if not missing:
        return Verdict("engine", True, f"engines in {f.store.path}: {'; '.join(found)}", blocking=True)
    why = f" ({stale[0]})" if stale else ""
    return Verdict(
        "engine", False, f"no usable {job.precision.value} engine pair in {f.store.path} for this size{why}",
        " && ".join(missing), blocking=True,
    )  # fmt: skip


def _find_pair(
    engines: tuple[EngineFacts, ...], net: dict, job: Job, height: int, width: int, batch: int,
    gpu: GpuFacts | None,
) -> tuple[list[str], list[str]]:  # fmt: skip
    """(ids of a prepare + step pair that serves the shape, reasons candidates were refused)."""
    graphs: dict[str, str] = {}
    refused = []
    for e in engines:
        k = e.key
        if k.get("net_config") != net or k.get("precision") != job.precision.value:
            continue
        if (
            not k.get("weightless")
            and job.weights_sha256
            and k.get("checkpoint_sha256") != job.weights_sha256
        ):
            continue
        if not _serves(k, height, width, batch):
            continue
        if e.status != "ok":
            refused.append(f"{e.status}: {e.reason}")
            continue
        if gpu is not None and not _runs_on(k, gpu):
            refused.append(f"{e.digest[:12]} built for SM {','.join(k.get('compute_capabilities') or [])}")
            continue
        graphs.setdefault(e.graph, e.digest[:12])
    if {"prepare", "step"} <= set(graphs):
        return [graphs["prepare"], graphs["step"]], refused
    return [], refused


def _serves(k: dict, height: int, width: int, batch: int) -> bool:
    """Whether the engine of manifest key ``k`` serves a ``width`` x ``height`` decode of ``batch``."""
    from pid_trt.buckets import ShapeRange
    from pid_trt.errors import ConfigError

    lo, _, hi = (k.get("batch_range") or [0, 0, 0])[:3]
    if isinstance(k.get("range"), dict):
        try:
            return ShapeRange.from_fields(k["range"]).contains(height, width, batch)
        except ConfigError:
            return False
    return (k.get("height"), k.get("width")) == (height, width) and lo <= batch <= hi


def _runs_on(k: dict, gpu: GpuFacts) -> bool:
    targets = [str(c) for c in k.get("compute_capabilities") or []]
    return not targets or gpu.cc in targets
