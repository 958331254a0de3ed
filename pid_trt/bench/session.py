"""Run a list of cases (each in its own process) and turn the timings into records.

Availability is checked here first (the backend's cheap checks: package present, CUDA visible); a case that
cannot run becomes a ``skipped`` record with the reason, never an error. Cost-model figures
come from :mod:`pid_trt.costmodel`: achieved TFLOP/s everywhere, roofline floor and MFU on
a GPU the cost model knows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pid_trt.bench.cases import BenchCase
from pid_trt.bench.child import run_job
from pid_trt.bench.env import collect_environment
from pid_trt.bench.records import BenchRecord, Environment, Status
from pid_trt.bench.runner import percentiles
from pid_trt.errors import ConfigError
from pid_trt.options import NetOptions

if TYPE_CHECKING:
    from pid_trt.config import NetConfig
    from pid_trt.costmodel import GpuSpec
    from pid_trt.options import RuntimeOptions
    from pid_trt.tiling.options import TileOptions

#: Device-name fragments -> :data:`pid_trt.costmodel.GPUS` keys (H100 PCIe is not the SXM part).
_GPU_ALIASES: tuple[tuple[str, str], ...] = (
    ("H100", "H100 SXM"), ("H200", "H200"), ("B200", "B200"), ("4090", "RTX 4090"), ("5090", "RTX 5090"),
)  # fmt: skip


@dataclass(frozen=True)
class BenchSettings:
    """Run settings shared by every case. warmup / runs: decodes; timeout_s: per child process."""

    net: NetOptions
    warmup: int = 1
    runs: int = 5
    threads: int | None = None
    seed: int = 0
    timeout_s: float | None = None


def plan_cases(
    backends: list[str], template: RuntimeOptions, sizes: list[tuple[int, int]], batches: list[int],
    hoists: tuple[bool, ...], steps: int = 4, tiling: TileOptions | None = None,
) -> list[BenchCase]:  # fmt: skip
    """The cases of one ``pidtrt bench`` run: each backend (``NAME[:PRECISION][@DEVICE]``, the rest
    from ``template``: :func:`pid_trt.bench.cases.bench_runtimes`) x size x batch x hoist variant
    (and, with ``tiling``, one shot and tiled); a ``template.device`` of "auto" is cuda when torch
    sees a GPU, else cpu."""
    from pid_trt.bench.cases import bench_runtimes, expand_cases

    if template.device == "auto":
        import torch

        template = replace(template, device="cuda" if torch.cuda.is_available() else "cpu")
    return expand_cases(bench_runtimes(backends, template), sizes, batches, hoists, steps, tiling)


def unavailable_reason(case: BenchCase) -> str | None:
    """Why ``case`` cannot run on this machine (the backend's cheap checks), or None."""
    return case.runtime.unavailable()


def gpu_spec_for(device_name: str) -> GpuSpec | None:
    """The cost model's :class:`~pid_trt.costmodel.GpuSpec` for a CUDA device name, or None."""
    from pid_trt.costmodel import GPUS

    if "PCIE" in device_name.upper():
        return None
    for fragment, key in _GPU_ALIASES:
        if fragment in device_name.upper():
            return GPUS[key]
    return None


def _base_record(case: BenchCase, env: Environment, status: Status, reason: str | None) -> BenchRecord:
    r = case.runtime
    return BenchRecord(
        backend=r.name, precision=r.precision.value, height=case.height, width=case.width,
        batch=case.batch, steps=case.steps, hoisted=case.hoist, device=env.device,
        device_kind=env.device_kind, status=status, reason=reason, env=env,
        tiling=_tiling_flags(case),
    )  # fmt: skip


def _tiling_flags(case: BenchCase) -> str | None:
    """A tiling case's options as CLI flags (``--tiles 2x2 --tile-batch 2``); None: one shot."""
    if case.tiling is None:
        return None
    return case.tiling.describe()


def _cost_fields(case: BenchCase, config: NetConfig, p50_ms: float, env: Environment) -> dict[str, Any]:
    from pid_trt.costmodel import estimate, floor_time, mfu

    est = estimate(config, case.height, case.width, case.batch, case.steps, case.runtime.precision)
    flop = est.flops_per_decode if case.hoist else est.flops_per_decode_unhoisted
    out: dict[str, Any] = {"flop_per_decode": flop, "achieved_tflops": flop / (p50_ms / 1e3) / 1e12}
    gpu = gpu_spec_for(env.device) if env.device_kind == "cuda" else None
    if gpu is not None:
        out["floor_ms"] = floor_time(est, gpu, per="decode", hoisted=case.hoist) * 1e3
        try:
            out["mfu"] = mfu(p50_ms / 1e3, est, gpu, per="decode", hoisted=case.hoist)
        except ConfigError:  # fp32 has no tensor-core peak in the cost model
            out["mfu"] = None
    return out


def to_record(case: BenchCase, result: dict[str, Any], env: Environment, config: NetConfig,
              warmup: int, runs: int, build_s: float | None) -> BenchRecord:  # fmt: skip
    """A record from a child's result dict (see :mod:`pid_trt.bench.child`)."""
    status = Status(result["status"])
    if status is not Status.OK:
        return _base_record(case, env, status, result.get("reason") or "no reason given")
    decode, steps = result["decode_ms"], result["step_ms"]
    lat = percentiles(decode)
    arts = result["artifacts"]
    notes = list(result.get("notes") or ())
    first = result.get("first_decode_s")
    if case.runtime.backend.compiles_on_first_decode and first is not None:
        build_s = build_s or first
        notes.append("build_s: first decode, the compilation included")
    rec = replace(
        _base_record(case, env, status, None),
        warmup=warmup, runs=runs, threads=result.get("threads"), latency_ms=lat,
        step_ms=percentiles(steps), images_per_s=case.batch * len(decode) / (sum(decode) / 1e3),
        peak_memory_mb=result["peak_memory_mb"], engine_mb=arts.get("engine_mb"),
        build_s=build_s if build_s is not None else arts.get("build_s"), setup_s=result.get("setup_s"),
        notes=tuple(notes),
    )  # fmt: skip
    rec = replace(rec, **_cost_fields(case, config, lat.p50, env))
    tiles = result.get("tiles")
    if not tiles or tiles.get("grid") is None:
        return rec
    flop = tiles["flop_per_decode"]  # the tiled decode's own FLOP (the cost model's, hoisted)
    return replace(
        rec, tiles=tiles["grid"], tile_size=tiles["tile_size"], tile_batch=tiles["tile_batch"],
        tile_count=tiles["tile_count"], tile_devices=tiles["devices"] or None, flop_per_decode=flop,
        achieved_tflops=flop / (lat.p50 / 1e3) / 1e12, floor_ms=None, mfu=None,
    )  # fmt: skip


def run_bench(
    cases: list[BenchCase],
    settings: BenchSettings,
    on_case: Callable[[BenchCase, int, int], None] | None = None,
) -> list[BenchRecord]:
    """Measure every case in its own process, in order; ``on_case(case, index, total)`` is
    called before each (progress)."""
    if settings.runs < 1 or settings.warmup < 0:
        raise ConfigError(
            f"--runs {settings.runs} --warmup {settings.warmup}: expected runs >= 1, warmup >= 0"
        )
    config = settings.net.resolve().config
    for case in cases:  # sizes are checked up front, not per child
        p = config.pixels_per_latent
        if case.height % 16 or case.width % 16 or case.height < p or case.width < p:
            raise ConfigError(
                f"size {case.width}x{case.height}: expected multiples of 16 of at least {p} pixels"
            )
    envs: dict[str, Environment] = {}
    prepared: dict[tuple, float | None] = {}
    records = []
    for i, case in enumerate(cases):
        if on_case is not None:
            on_case(case, i, len(cases))
        dev = case.runtime.device
        reason = unavailable_reason(case)
        if dev not in envs:
            envs[dev] = collect_environment(dev if reason is None or not dev.startswith("cuda") else "cpu")
            if reason is not None and dev.startswith("cuda"):
                envs[dev] = replace(envs[dev], device=f"cuda (unavailable; host {envs[dev].device})",
                                    device_kind="cuda")  # fmt: skip
        env = envs[dev]
        if reason is not None:
            records.append(_base_record(case, env, Status.SKIPPED, reason))
            continue
        job = {
            "case": case.to_dict(), "net": settings.net.to_dict(), "warmup": settings.warmup,
            "runs": settings.runs, "seed": settings.seed, "threads": settings.threads,
        }  # fmt: skip
        art_key = (replace(case.runtime, hoist=True), case.height, case.width, case.batch)
        if case.runtime.backend.makes_artifacts and art_key not in prepared:
            prep = run_job({**job, "mode": "prepare"}, settings.timeout_s)
            if prep["status"] != Status.OK.value:
                records.append(_base_record(case, env, Status(prep["status"]), prep.get("reason")))
                continue
            prepared[art_key] = prep["artifacts"].get("build_s")
        result = run_job({**job, "mode": "measure"}, settings.timeout_s)
        records.append(
            to_record(case, result, env, config, settings.warmup, settings.runs, prepared.get(art_key))
        )
    return records
