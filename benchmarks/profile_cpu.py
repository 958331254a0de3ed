"""Where a CPU decode's time goes: torch.profiler on torch eager, ONNX Runtime's own profiler.

    python benchmarks/profile_cpu.py --backbone small --res 256 [--export-dir export] [--top 15]

Prints, for one hoisted 4-step decode after one warm-up decode, the top ops by self time
for torch eager and for ONNX Runtime (the exported prepare + step graphs, the same session
options as the onnxruntime backend, ``enable_profiling`` on). Times are milliseconds.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path


def _torch_profile(spec, res: int, top: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from pid_trt.bench.cases import BenchCase, BenchTarget
    from pid_trt.bench.runner import make_backend, seeded_conditioning
    from pid_trt.config import Precision
    from pid_trt.sampling import draw_noise, sample

    case = BenchCase(BenchTarget("torch", Precision.FP32, "cpu"), res, res, 1, True)
    with make_backend(case, spec, Path("engines"), Path("export")) as backend:
        cond = seeded_conditioning(spec.config, res, res, 1, 0)
        noise = draw_noise((1, 3, res, res))
        sample(backend.bind(cond), noise)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            sample(backend.bind(cond), noise)
            wall = (time.perf_counter() - t0) * 1e3
    print(
        f"\n### torch eager fp32, {res}x{res}, {torch.get_num_threads()} threads: decode {wall:.0f} ms (profiled)\n"
    )
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e3
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    print("| op | calls | self ms | share |\n|---|---|---|---|")
    for e in rows:
        ms = e.self_cpu_time_total / 1e3
        print(f"| {e.key} | {e.count} | {ms:.1f} | {100 * ms / total:.1f}% |")


def _ort_profile(spec, res: int, export_dir: Path, top: int) -> None:
    import numpy as np
    import onnxruntime as ort

    from pid_trt.bench.cases import BenchCase, BenchTarget
    from pid_trt.bench.runner import export_key, seeded_conditioning
    from pid_trt.compile.export import ensure_export
    from pid_trt.config import Precision
    from pid_trt.sampling import TIMESCALE, timesteps

    case = BenchCase(BenchTarget("onnxruntime", Precision.FP32, "cpu"), res, res, 1, True)
    key = export_key(spec, case)
    found = ensure_export(spec, key, export_dir)
    cond = seeded_conditioning(spec.config, res, res, 1, 0)
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        prep = ort.InferenceSession(str(found.prepare), opts, providers=["CPUExecutionProvider"])
        step = ort.InferenceSession(str(found.step), opts, providers=["CPUExecutionProvider"])
        caption = cond.caption[:, : spec.config.txt_max_length].numpy()
        x = np.random.default_rng(0).standard_normal((1, 3, res, res), dtype=np.float32)
        t0 = time.perf_counter()
        for _ in range(2):  # warm-up decode, then the measured one (both profiled; halved below)
            feeds = dict(zip([o.name for o in prep.get_outputs()], prep.run(None, {"caption": caption,
                                                                                   "latent": cond.latent.numpy()}), strict=True))  # fmt: skip
            for t in timesteps(4)[:-1]:
                feeds.update(
                    x=x, t=np.full((1,), t * TIMESCALE, np.float32), degrade_sigma=np.zeros(1, np.float32)
                )
                step.run(None, feeds)
        wall = (time.perf_counter() - t0) * 1e3 / 2
        by_op: dict[str, float] = collections.Counter()
        calls: dict[str, int] = collections.Counter()
        for path in (prep.end_profiling(), step.end_profiling()):
            for ev in json.loads(Path(path).read_text()):
                if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
                    op = ev.get("args", {}).get("op_name", "?")
                    by_op[op] += ev["dur"] / 1e3 / 2
                    calls[op] += 1
    total = sum(by_op.values())
    print(f"\n### ONNX Runtime fp32 CPU, {res}x{res}: decode {wall:.0f} ms (profiling on)\n")
    print("| op type | kernel calls / decode | ms / decode | share |\n|---|---|---|---|")
    for op, ms in sorted(by_op.items(), key=lambda kv: kv[1], reverse=True)[:top]:
        print(f"| {op} | {calls[op] // 2} | {ms:.1f} | {100 * ms / total:.1f}% |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="small")
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--export-dir", type=Path, default=Path("export"))
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--only", choices=("torch", "onnxruntime"), default=None)
    args = ap.parse_args()
    from pid_trt.options import NetOptions

    spec = NetOptions(backbone=args.backbone, random_weights=True).resolve()
    if args.only in (None, "torch"):
        _torch_profile(spec, args.res, args.top)
    if args.only in (None, "onnxruntime"):
        _ort_profile(spec, args.res, args.export_dir, args.top)


if __name__ == "__main__":
    main()
