"""One-shot vs tiled decoding: measured on this machine (the ``small`` stand-in with a set
envelope of 256x256 tiles) and estimated for flux on an H100 by the cost model.

    python benchmarks/tiling.py [--sizes 512,1024,2048] [--repeats 3,3,2] [--threads 2]

Measured rows (``Decoder.decode``, torch eager, fp32, CPU, random weights, one image, seed 0):
each (size, way) runs in a fresh child process (model load, then ``repeats`` decodes); p50 of the decode
wall time (after a 256x256 warm-up decode), the child's peak RSS (``ru_maxrss``) and its RSS
after the warm-up, the 1-minute load average after the runs (the machine is shared), and the
tiled image's difference from the one-shot image (same latent, caption and noise). One shot:
``tiles="off", allow_untrained_size=True``; tiled: ``tiles="auto"`` with
``Decoder.load(envelope="256x256")``, default overlap, tile batch 1.

Estimated rows: :func:`pid_trt.tiling.plan` for flux-2k and flux-2kto4k at 2048x2048,
4096x4096, 3840x2160 and 8192x8192 (bf16, batch 1, 4 steps): FLOP per decode, attention
share, activations, the memory estimate, the H100 SXM roofline floor; the tiled column uses
the plan's tile (sizes inside the envelope are one shot: tiled shows "-").

Writes benchmarks/results/tiling_<date>.{json,md,png}.

    python benchmarks/tiling.py --served 1024 [--preset tiny] [--repeats 3] [--threads 2]

Served rows: a real ``pidtrt serve --backbone PRESET --random-weights --envelope 256x256``
per way (one shot: ``--tiles off --allow-untrained-size``; tiled: the default ``--tiles auto``),
one 256x256 warm-up request, then ``repeats`` requests of
SIZE x SIZE one after another: p50 of the client-side latency, and the model instance's peak RSS
(``VmHWM`` of Triton's Python stub process). Writes benchmarks/results/serve_tiling_<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ENVELOPE = "256x256"
FLUX_SIZES = ((2048, 2048), (4096, 4096), (2160, 3840), (8192, 8192))  # (height, width)


def _rss_now() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def child(size: int, way: str, repeats: int, threads: int, out: Path) -> None:
    """One (size, way) in this process: load, decode ``repeats`` times, report JSON on stdout."""
    import torch

    from pid_trt import Decoder

    torch.set_num_threads(threads)
    dec = Decoder.load(backbone="small", random_weights=True, envelope=ENVELOPE, memory_check=False)
    config = dec.config
    cells = size // config.pixels_per_latent
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(1, config.lq_latent_channels, cells, cells, generator=g)
    caption = torch.randn(1, config.txt_max_length, config.txt_embed_dim, generator=g)
    tiling = {"tiles": "auto"} if way == "tiled" else {"tiles": "off", "allow_untrained_size": True}
    p = dec.plan(size, size, 1, 4, **tiling)
    dec.decode(latent[:, :, :8, :8], caption, seed=1, tiles="off")  # warm-up: threads, allocator (256x256)
    rss_loaded = _rss_now()
    times, image = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        image = dec.decode(latent, caption, seed=0, **tiling)
        times.append(time.perf_counter() - t0)
    torch.save(image, out)
    print(json.dumps({
        "size": size, "way": way, "repeats": repeats, "times_s": times, "p50_s": statistics.median(times),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_after_load_bytes": rss_loaded,
        "tiles": None if p.grid is None else p.grid.describe(),
        "estimate_bytes": p.cost.memory.total, "load_avg_after": os.getloadavg()[0],
    }))  # fmt: skip


def measured(sizes: list[int], repeats: list[int], threads: int) -> list[dict]:
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size, reps in zip(sizes, repeats, strict=True):
            images = {}
            for way in ("one-shot", "tiled"):
                out = Path(tmp) / f"{size}_{way}.pt"
                cmd = [sys.executable, __file__, "--child", str(size), way, str(reps), str(threads), str(out)]
                run = subprocess.run(cmd, capture_output=True, text=True, check=True)
                row = json.loads(run.stdout.strip().splitlines()[-1])
                images[way] = torch.load(out)
                rows.append(row)
                print(f"{size}^2 {way}: p50 {row['p50_s']:.1f} s, peak RSS {row['peak_rss_bytes'] / 2**30:.2f} GiB",
                      file=sys.stderr)  # fmt: skip
            diff = (images["tiled"] - images["one-shot"]).abs()
            rows[-1]["max_abs_diff"] = float(diff.max())
            rows[-1]["mean_abs_diff"] = float(diff.mean())
            mse = float((diff.double() ** 2).mean())  # images in [-1, 1]: peak-to-peak 2
            rows[-1]["psnr_db_vs_one_shot"] = 10 * math.log10(4.0 / mse) if mse > 0 else float("inf")
    return rows


def estimated() -> list[dict]:
    from pid_trt.config import get_preset
    from pid_trt.tiling import TileOptions, envelope_for, plan

    rows = []
    for ckpt in ("2k", "2kto4k"):
        preset = get_preset("flux", ckpt)
        env = envelope_for(preset)
        for h, w in FLUX_SIZES:
            p = plan(preset.config, h, w, TileOptions(), envelope=env)
            row = {
                "net": preset.name,
                "size": f"{w}x{h}",
                "tiles": None if p.grid is None else p.grid.describe(),
            }
            for name, cost in (("one_shot", p.one_shot), ("tiled", p.tiled_cost)):
                row[name] = None if cost is None else {
                    "flops": cost.flops, "attention_share": cost.attention_share,
                    "activation_bytes": cost.activation_bytes, "memory_bytes": cost.memory.total,
                    "h100_floor_s": cost.floor_s,
                }  # fmt: skip
            rows.append(row)
    return rows


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def markdown(meta: dict, meas: list[dict], est: list[dict]) -> str:
    lines = [
        f"# One-shot vs tiled decoding ({meta['date']})",
        "",
        f"Command: `{meta['command']}`. Machine: {meta['machine']}; load average at start {meta['load']}.",
        "",
        f"## Measured: `small` (random weights, torch fp32 CPU, {meta['threads']} threads), envelope {{{ENVELOPE}}}",
        "",
        "| size | way | tiles | p50 (s) | runs | load after | peak RSS (GiB) | RSS before (GiB) | estimate (GiB) | "
        "max / mean abs diff vs one shot | PSNR vs one shot (dB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in meas:
        diff = f"{r['max_abs_diff']:.3f} / {r['mean_abs_diff']:.4f}" if "max_abs_diff" in r else "-"
        ps = f"{r['psnr_db_vs_one_shot']:.1f}" if "psnr_db_vs_one_shot" in r else "-"
        lines.append(
            f"| {r['size']}² | {r['way']} | {r['tiles'] or '-'} | {r['p50_s']:.1f} | {r['repeats']} | "
            f"{r['load_avg_after']:.1f} | "
            f"{_gib(r['peak_rss_bytes'])} | {_gib(r['rss_after_load_bytes'])} | {_gib(r['estimate_bytes'])} | "
            f"{diff} | {ps} |"
        )
    lines += [
        "",
        "## Estimated: flux, bf16, batch 1, 4 steps, H100 SXM roofline floor (`pid_trt.tiling.plan`)",
        "",
        "| net | size | tiles (auto) | FLOP one shot / tiled | attention share | activations (GiB) | "
        "memory estimate (GiB) | H100 floor (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in est:
        o, t = r["one_shot"], r["tiled"]

        def pair(key: str, fmt, o=o, t=t) -> str:
            return f"{fmt(o[key])} / {fmt(t[key]) if t else '-'}"

        lines.append(
            f"| {r['net']} | {r['size']} | {r['tiles'] or 'one shot (inside)'} | "
            f"{pair('flops', lambda x: f'{x / 1e12:.0f} TF')} | "
            f"{pair('attention_share', lambda x: f'{100 * x:.0f}%')} | "
            f"{pair('activation_bytes', _gib)} | {pair('memory_bytes', _gib)} | "
            f"{pair('h100_floor_s', lambda x: f'{x * 1e3:.0f}')} |"
        )
    return "\n".join(lines) + "\n"


def plot(path: Path, meas: list[dict], est: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for way, marker in (("one-shot", "o"), ("tiled", "s")):
        rows = [r for r in meas if r["way"] == way]
        a.plot(
            [r["size"] for r in rows], [r["peak_rss_bytes"] / 2**30 for r in rows], marker=marker, label=way
        )
    a.set(
        xlabel="output side (px, square)", ylabel="peak RSS (GiB)", title="small, torch CPU fp32 (measured)"
    )
    a.set_xscale("log", base=2)
    a.legend()
    for net, style in (("flux-2k", "-"), ("flux-2kto4k", "--")):
        rows = [r for r in est if r["net"] == net]
        px = [int(r["size"].split("x")[0]) * int(r["size"].split("x")[1]) / 1e6 for r in rows]
        one = [r["one_shot"]["memory_bytes"] / 2**30 for r in rows]
        tiled = [(r["tiled"] or r["one_shot"])["memory_bytes"] / 2**30 for r in rows]
        order = sorted(range(len(px)), key=px.__getitem__)
        b.plot([px[i] for i in order], [one[i] for i in order], style, marker="o", label=f"{net} one shot")
        b.plot(
            [px[i] for i in order],
            [tiled[i] for i in order],
            style,
            marker="s",
            label=f"{net} auto (tiled outside)",
        )
    b.set(xlabel="output megapixels", ylabel="memory estimate (GiB)", title="flux bf16 (cost model)")
    b.set_xscale("log")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _stub_peak_rss(workspace: Path) -> int:
    """Peak RSS (bytes) of the Python-backend stub processes serving from ``workspace``."""
    peak = 0
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "triton_python_backend_stub" not in cmd or str(workspace) not in cmd:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            continue
    return peak


def served(size: int, preset: str, repeats: int, threads: int) -> list[dict]:
    """The served rows (see the module docstring): one server per way."""
    import signal
    import socket
    import urllib.request

    import numpy as np

    from pid_trt.serve.client import PidClient

    rows = []
    for way, flags in (("one-shot", ["--tiles", "off", "--allow-untrained-size"]), ("tiled", [])):
        socks = [socket.socket() for _ in range(3)]
        for sk in socks:
            sk.bind(("127.0.0.1", 0))
        http, grpc, metrics = (sk.getsockname()[1] for sk in socks)
        for sk in socks:
            sk.close()
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pid_trt.cli.main", "serve", "--backbone", preset, "--random-weights",
                   "--envelope", ENVELOPE, "--threads", str(threads), "--http-port", str(http), "--grpc-port",
                   str(grpc), "--metrics-port", str(metrics), "--workspace", tmp, "--no-memory-check", *flags]  # fmt: skip
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            url = f"http://127.0.0.1:{http}"
            try:
                for _ in range(600):
                    try:
                        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as resp:
                            if resp.status == 200:
                                break
                    except OSError:
                        time.sleep(0.5)
                with PidClient(url, timeout_s=3600) as client:
                    p = client.parameters()
                    ppl, ch = int(p["pixels_per_latent"]), int(p["latent_channels"])
                    rng = np.random.default_rng(0)
                    cap = rng.standard_normal(
                        (1, int(p["txt_max_length"]), int(p["txt_embed_dim"])), dtype=np.float32
                    )
                    client.decode(rng.standard_normal((1, ch, 256 // ppl, 256 // ppl), dtype=np.float32), cap)
                    lat = rng.standard_normal((1, ch, size // ppl, size // ppl), dtype=np.float32)
                    times = []
                    for i in range(repeats):
                        t0 = time.perf_counter()
                        client.decode(lat, cap, seed=i)
                        times.append(time.perf_counter() - t0)
                rows.append({
                    "size": size, "way": way, "preset": preset, "repeats": repeats, "p50_s": statistics.median(times),
                    "times_s": times, "peak_rss_bytes": _stub_peak_rss(Path(tmp)), "command": " ".join(["pidtrt", *cmd[3:11], *cmd[19:]]),
                    "load_after": os.getloadavg()[0],
                })  # fmt: skip
                print(f"served {size}^2 {way}: p50 {rows[-1]['p50_s']:.2f} s, peak RSS "
                      f"{rows[-1]['peak_rss_bytes'] / 2**30:.2f} GiB", file=sys.stderr)  # fmt: skip
            finally:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=120)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512,1024,2048")
    ap.add_argument("--repeats", default="3,3,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", nargs=5, metavar=("SIZE", "WAY", "REPEATS", "THREADS", "OUT"))
    ap.add_argument(
        "--served", type=int, metavar="SIZE", help="Measure a served SIZE x SIZE request instead."
    )
    ap.add_argument("--preset", default="tiny", help="--served: the stand-in preset (tiny or small).")
    args = ap.parse_args()
    if args.served:
        rows = served(args.served, args.preset, int(args.repeats.split(",")[0]), args.threads)
        date = dt.date.today().isoformat()
        meta = {"date": date, "command": "python benchmarks/tiling.py " + " ".join(sys.argv[1:]),
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, no GPU"}  # fmt: skip
        lines = [f"# Served {args.served}x{args.served} ({args.preset}, envelope {ENVELOPE}), {date}", "",
                 f"`{meta['command']}`; {meta['machine']}", "", "| way | p50 s | runs (s) | peak RSS GiB | load |",
                 "|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            runs = ", ".join(f"{t:.2f}" for t in r["times_s"])
            lines.append(f"| {r['way']} | {r['p50_s']:.2f} | {runs} | {r['peak_rss_bytes'] / 2**30:.2f} | "
                         f"{r['load_after']:.1f} |")  # fmt: skip
        stem = args.out / f"serve_tiling_{args.preset}_{args.served}_{date}"
        stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "served": rows}, indent=1))
        stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    if args.child:
        size, way, reps, threads, out = args.child
        child(int(size), way, int(reps), int(threads), Path(out))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    repeats = [int(s) for s in args.repeats.split(",")]
    meta = {
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/tiling.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, no GPU",
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "threads": args.threads,
    }
    est = estimated()
    meas = measured(sizes, repeats, args.threads)
    stem = args.out / f"tiling_{meta['date']}"
    stem.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "measured": meas, "estimated": est}, indent=1)
    )
    stem.with_suffix(".md").write_text(markdown(meta, meas, est))
    plot(stem.with_suffix(".png"), meas, est)
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
