"""The timing loop: construct one backend, warm up, time ``runs`` decodes and every denoiser call.

CPU: ``time.perf_counter``. CUDA: CUDA events recorded around each decode and each
denoiser call, read after one synchronisation at the end of the decode (no host syncs are
added between steps). A decode is ``bind`` (the per-decode work) + the sampler's steps;
noise is drawn before timing, on the device.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pid_trt.backends.base import Artifacts
from pid_trt.bench.cases import BenchCase
from pid_trt.bench.records import Percentiles

if TYPE_CHECKING:
    from pid_trt.backends.base import Backend, Conditioning
    from pid_trt.config import NetConfig
    from pid_trt.netspec import NetSpec
    from pid_trt.tiling import SizePlan

_MIB = float(2**20)


def percentiles(samples: Sequence[float]) -> Percentiles:
    """p50 / p95 / p99 of ``samples`` (ms) by linear interpolation between closest ranks
    (``numpy.percentile``'s default method)."""
    xs = sorted(float(s) for s in samples)
    if not xs:
        raise ValueError("percentiles of no samples")

    def q(p: float) -> float:
        pos = (len(xs) - 1) * p / 100.0
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return Percentiles(q(50), q(95), q(99))


@dataclass(frozen=True)
class Measurement:
    """Raw timings of one case: decode_ms per timed decode, step_ms per denoiser call (ms);
    setup_s: backend construction (s); first_decode_s: the first warm-up decode (s);
    peak_memory_mb: see :func:`peak_memory_mb`."""

    decode_ms: tuple[float, ...]
    step_ms: tuple[float, ...]
    setup_s: float
    first_decode_s: float | None
    threads: int
    peak_memory_mb: float
    artifacts: Artifacts
    notes: tuple[str, ...] = ()
    tiles: dict[str, Any] | None = None  # a tiling case's plan: see tiled_figures


def seeded_conditioning(config: NetConfig, height: int, width: int, batch: int, seed: int) -> Conditioning:
    """The :class:`~pid_trt.backends.base.Conditioning` of a seeded random latent and caption for
    a ``height`` x ``width`` (pixels) decode of ``batch`` images (the bench's inputs)."""
    from pid_trt.backends.base import Conditioning
    from pid_trt.io import sample_latent

    p = config.pixels_per_latent  # sizes between latent cells round the latent up (as decode does)
    lat = sample_latent(config, batch, -(-height // p) * p, -(-width // p) * p, seed=seed)
    assert lat.caption is not None  # a sampled latent always has its caption
    return Conditioning(lat.latent, lat.caption, lat.degrade_sigma, height, width)


def make_artifacts(spec: NetSpec, case: BenchCase) -> Artifacts:
    """Make what the case's backend needs before it can be timed (the ONNX export for
    onnxruntime: :meth:`Backend.make_artifacts`) so the measuring process doesn't carry the
    export's memory; engines are never built here."""
    from pid_trt.backends.factory import BackendRequest

    request = BackendRequest(spec, case.runtime, case.height, case.width, case.batch)
    return case.runtime.backend.make_artifacts(request)


def tiled_figures(size_plan: SizePlan, devices: Sequence[str]) -> dict[str, Any]:
    """What a bench record says of a tiling case's plan: grid ("COLSxROWS", None: one shot),
    tile_size ("WxH"), tile_batch, tile_count (tile evaluations per step), devices, and the tiled
    decode's FLOP (cost model, hoisted)."""
    g = size_plan.grid
    if g is None:
        return {"grid": None}
    return {
        "grid": f"{g.cols}x{g.rows}", "tile_size": f"{g.tile_width}x{g.tile_height}",
        "tile_batch": size_plan.tile_batch, "tile_count": g.count * size_plan.batch, "devices": list(devices),
        "flop_per_decode": size_plan.cost.flops,
    }  # fmt: skip


@contextmanager
def make_denoisers(
    case: BenchCase, spec: NetSpec, cond: Conditioning
) -> Iterator[tuple[Backend | None, Callable[[], AbstractContextManager[Any]], dict[str, Any] | None]]:
    """(the one-shot backend or None, a function that opens one decode's denoiser of ``cond``,
    the tiling case's :func:`tiled_figures` or None), from a :class:`pid_trt.Decoder`. Every
    backend is created on entry (setup), and each decode binds anew, tiled or not."""
    from pid_trt.decoder import Decoder

    tiling = case.tiling
    with Decoder(spec, case.runtime, max_backends=8) as dec:
        size_plan = (
            None
            if tiling is None
            else dec.plan(case.height, case.width, case.batch, case.steps, tiling=tiling)
        )
        if size_plan is not None and tiling is not None and size_plan.tiled:
            devices = tiling.devices
            with dec.denoiser(size_plan, cond, devices):  # creates every tile backend now
                pass
            yield None, lambda: dec.denoiser(size_plan, cond, devices), tiled_figures(size_plan, devices)
            return
        with dec.backend(case.height, case.width, case.batch) as backend:
            figures = None if size_plan is None else tiled_figures(size_plan, ())
            yield backend, lambda: nullcontext(backend.bind(cond)), figures


def peak_memory_mb(device: str, engine_device_mb: float | None) -> float:
    """CPU: this process's peak RSS (``ru_maxrss``, MiB). CUDA: torch's peak allocated plus the
    engine memory the backend reports (TensorRT weights + context), MiB."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / _MIB + (engine_device_mb or 0.0)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _clock(cuda: bool) -> tuple[Callable[[], Any], Callable[[Any, Any], float], Callable[[], None]]:
    """(stamp, elapsed_ms(a, b), sync) for CPU wall time or CUDA events."""
    if not cuda:
        return time.perf_counter, lambda a, b: (b - a) * 1e3, lambda: None
    import torch

    def stamp() -> Any:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    return stamp, lambda a, b: float(a.elapsed_time(b)), torch.cuda.synchronize


def _timed(den: Callable[[Any, float], Any], calls: list, stamp: Callable[[], Any]) -> Callable:
    """``den`` recording a (start, end) stamp pair per call into ``calls``."""

    def call(x: Any, t: float) -> Any:
        a = stamp()
        v = den(x, t)
        calls.append((a, stamp()))
        return v

    return call


def measure(
    case: BenchCase,
    spec: NetSpec,
    warmup: int,
    runs: int,
    seed: int = 0,
    threads: int | None = None,
) -> Measurement:
    """Construct the backend, run ``warmup`` untimed and ``runs`` timed decodes of ``case``."""
    import torch

    from pid_trt.sampling import draw_noise, sample

    if threads:
        torch.set_num_threads(threads)
    dev = case.runtime.device
    cuda = dev.startswith("cuda")
    load_before = os.getloadavg()[0]
    notes: list[str] = []
    cond = seeded_conditioning(spec.config, case.height, case.width, case.batch, seed)
    start = time.perf_counter()
    with make_denoisers(case, spec, cond) as (backend, open_denoiser, tiles):
        setup_s = time.perf_counter() - start
        arts = backend.artifacts() if backend is not None else Artifacts()
        noise = draw_noise((case.batch, 3, case.height, case.width), case.steps, seed, dev)
        stamp, elapsed, sync = _clock(cuda)
        first_decode_s = None
        decode_ms: list[float] = []
        step_ms: list[float] = []
        for i in range(warmup + runs):
            calls: list[tuple[Any, Any]] = []
            t0 = time.perf_counter()
            s0 = stamp()
            with open_denoiser() as den:
                sample(_timed(den, calls, stamp), noise, case.steps)
            s1 = stamp()
            sync()
            if i == 0:
                first_decode_s = time.perf_counter() - t0
            if i >= warmup:
                decode_ms.append(elapsed(s0, s1))
                step_ms.extend(elapsed(a, b) for a, b in calls)
        notes.append(
            f"load average (1 min) {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        if case.runtime.backend.compiles_on_first_decode and warmup == 0:
            notes.append("no warm-up: the first timed decode includes the compilation")
        used_threads = arts.threads or torch.get_num_threads()
        peak = peak_memory_mb(dev, arts.device_mb)
    return Measurement(
        tuple(decode_ms),
        tuple(step_ms),
        setup_s,
        first_decode_s,
        used_threads,
        peak,
        arts,
        tuple(notes),
        tiles,
    )
