"""Merge ``pidtrt bench --pipeline --json`` documents into one JSON + Markdown + plot.

    python benchmarks/pipeline_report.py r1.json r2.json r3.json --out benchmarks/results/pipeline_2026-12-07

The plot: steady images/s per case (serial and pipelined) beside the simulated device's rate.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("--out", required=True, type=Path, help="path stem: writes .json, .md, .png")
    ap.add_argument("--note", default="", help="a paragraph for the Markdown (machine, load)")
    args = ap.parse_args()
    from pid_trt.bench.pipeline import PipelineRecord, render_markdown

    docs = [json.loads(p.read_text()) for p in args.inputs]
    records = [r for d in docs for r in d["records"]]
    merged = {"schema": docs[0]["schema"], "meta": {"runs": [d["meta"] for d in docs]}, "records": records}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(merged, indent=2) + "\n")
    recs = [PipelineRecord(**r) for r in records]
    md = "# Host pipeline: serial (before) vs pipelined, simulated H100\n\n" + (
        args.note + "\n\n" if args.note else ""
    )
    md += render_markdown(recs, "Per-image stages (ms) and steady-state images/s")
    args.out.with_suffix(".md").write_text(md)
    _plot(recs, args.out.with_suffix(".png"))


def _plot(records, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.width}x{r.height}\n{r.format} {r.path}\n{r.simulated_device_ms:.0f} ms" for r in records]
    fig, ax = plt.subplots(figsize=(max(8, len(records) * 1.1), 5))
    xs = range(len(records))
    ax.bar(
        [x - 0.2 for x in xs], [r.images_per_s for r in records], width=0.4, label="host pipeline, images/s"
    )
    ax.bar(
        [x + 0.2 for x in xs],
        [r.simulated_device_images_per_s or 0 for r in records],
        width=0.4,
        label="simulated device, images/s",
        alpha=0.6,
    )
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("images / s")
    ax.set_title("pidtrt bench --pipeline (2-core x86_64 CPU, shared; simulated H100)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
