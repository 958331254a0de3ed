"""Markdown table and PNG plots of benchmark records.

Ratio columns compare each record with the *baseline* of its (size, batch): the first
measured record of that size and batch in run order, i.e. the first ``--backend`` given
(hoisted variant first). ``speed-up`` = baseline p50 / this p50 (> 1: faster);
``mem ×`` = this peak memory / baseline peak memory.
"""

from __future__ import annotations

from pathlib import Path

from pid_trt.bench.records import BenchRecord


def _f(value: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if value is None else fmt.format(value)


def baselines(records: list[BenchRecord]) -> dict[tuple[int, int, int], BenchRecord]:
    """The baseline record of each (height, width, batch): its first measured record."""
    out: dict[tuple[int, int, int], BenchRecord] = {}
    for r in records:
        if r.ok:
            out.setdefault((r.height, r.width, r.batch), r)
    return out


def render_table(records: list[BenchRecord]) -> str:
    """One markdown row per record, skipped / failed ones included with their reason."""
    base = baselines(records)
    gpu = any(r.device_kind == "cuda" and r.ok for r in records)
    tiling = any(r.tiling for r in records)
    head = ["backend", "precision", "size", "batch", "hoisted"] + (["tiles"] if tiling else []) + ["p50 ms", "p95 ms", "p99 ms", "step p50 ms",
            "images/s", "peak MB", "TFLOP/s"]  # fmt: skip
    if gpu:
        head += ["floor ms", "MFU"]
    head += ["speed-up", "mem ×", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        b = base.get((r.height, r.width, r.batch))
        cells = [r.backend, r.precision, f"{r.width}x{r.height}", str(r.batch), "yes" if r.hoisted else "no"]
        if tiling:
            cells.append(tiles_cell(r))
        lat = r.latency_ms
        cells += [_f(lat.p50 if lat else None), _f(lat.p95 if lat else None), _f(lat.p99 if lat else None)]
        cells += [_f(r.step_ms.p50 if r.step_ms else None), _f(r.images_per_s, "{:.3g}"),
                  _f(r.peak_memory_mb, "{:.0f}"), _f(r.achieved_tflops, "{:.3g}")]  # fmt: skip
        if gpu:
            cells += [_f(r.floor_ms), _f(r.mfu * 100 if r.mfu is not None else None, "{:.1f}%")]
        if r.ok and b is not None and lat and b.latency_ms and r.peak_memory_mb and b.peak_memory_mb:
            cells += [f"{b.latency_ms.p50 / lat.p50:.2f}×", f"{r.peak_memory_mb / b.peak_memory_mb:.2f}×"]
        else:
            cells += ["–", "–"]
        status = r.status.value if r.reason is None else f"{r.status.value}: {r.reason}"
        cells.append(status.replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tiles_cell(r: BenchRecord) -> str:
    """How a row decoded: ``one shot``, or ``2x2 of 64x64, tile batch 2, 4 tiles`` (+ devices)."""
    if not r.tiles:
        return "one shot"
    devices = f", on {','.join(r.tile_devices)}" if r.tile_devices else ""
    return f"{r.tiles} of {r.tile_size}, tile batch {r.tile_batch}, {r.tile_count} tiles{devices}"


def render_header(records: list[BenchRecord]) -> str:
    """One line per device naming the machine, threads and versions the figures come from."""
    seen, lines = set(), []
    for r in records:
        if r.env is None or r.env.device in seen:
            continue
        seen.add(r.env.device)
        vers = ", ".join(f"{k} {v}" for k, v in sorted(r.env.versions.items()))
        threads = sorted({x.threads for x in records if x.env == r.env and x.threads})
        driver = f", driver {r.env.driver}" if r.env.driver else ""
        thr = f", {'/'.join(map(str, threads))} threads" if threads else ""
        lines.append(f"- device: {r.env.device}{driver}{thr}; {vers}")
    ok = [r for r in records if r.ok]
    if ok:
        lines.append(f"- {ok[0].warmup} warm-up + {ok[0].runs} timed decodes per row, {ok[0].steps} steps; "
                     "speed-up and mem × are relative to the first backend of each size and batch")  # fmt: skip
    return "\n".join(lines) + "\n"


def render_markdown(records: list[BenchRecord], title: str | None = None) -> str:
    """Header lines + table (what ``pidtrt bench`` prints)."""
    top = f"## {title}\n\n" if title else ""
    notes = [f"- {r.label} {r.width}x{r.height} batch {r.batch}: {n}" for r in records for n in r.notes]
    tail = "\nNotes:\n" + "\n".join(notes) + "\n" if notes else ""
    return top + render_header(records) + "\n" + render_table(records) + tail


def plot(records: list[BenchRecord], path: Path) -> Path:
    """PNG with two panels: p50 decode latency vs megapixels per backend variant (log-log when
    sizes span > 4x), and throughput (images/s) bars per size x batch. Raises ConfigError when
    matplotlib is missing."""
    from pid_trt.errors import BackendUnavailableError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BackendUnavailableError("--plot needs matplotlib: pip install 'pid-trt[bench]'") from None
    ok = [r for r in records if r.ok and r.latency_ms is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    labels = list(dict.fromkeys(r.label for r in ok))
    for label in labels:
        rows = sorted((r for r in ok if r.label == label and r.batch == min(x.batch for x in ok)),
                      key=lambda r: r.height * r.width)  # fmt: skip
        ax1.plot(
            [r.height * r.width / 1e6 for r in rows],
            [r.latency_ms.p50 for r in rows if r.latency_ms],
            "o-",
            label=label,
        )
    mps = [r.height * r.width / 1e6 for r in ok]
    if mps and max(mps) > 4 * min(mps):
        ax1.set_xscale("log")
        ax1.set_yscale("log")
    ax1.set_xlabel("output megapixels")
    ax1.set_ylabel("p50 decode latency (ms)")
    ax1.set_title("Latency vs resolution" + (f" (batch {min(r.batch for r in ok)})" if ok else ""))
    groups = list(dict.fromkeys((r.width, r.height, r.batch) for r in ok))
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        xs, ys = [], []
        for g, (w, h, b) in enumerate(groups):
            hit = [r for r in ok if r.label == label and (r.width, r.height, r.batch) == (w, h, b)]
            if hit:
                xs.append(g + j * width)
                ys.append(hit[0].images_per_s)
        ax2.bar(xs, ys, width=width, label=label)
    ax2.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    ax2.set_xticklabels([f"{w}x{h}\nbatch {b}" for w, h, b in groups])
    ax2.set_ylabel("throughput (images/s)")
    ax2.set_title("Throughput")
    device = ok[0].device if ok else (records[0].device if records else "")
    skipped = sorted({r.label for r in records if not r.ok})
    fig.suptitle(device + (f" — not run here: {', '.join(skipped)}" if skipped else ""), fontsize=9)
    if labels:
        ax1.legend(fontsize=8)
        ax2.legend(fontsize=8)
    else:
        for ax in (ax1, ax2):
            ax.text(
                0.5, 0.5, "no backend ran on this machine", ha="center", va="center", transform=ax.transAxes
            )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(
    records: list[BenchRecord], text: str, meta: dict, *, json_path: Path | None = None,
    markdown_path: Path | None = None, plot_path: Path | None = None,
) -> None:  # fmt: skip
    """Write the run as JSON (records + ``meta``), its Markdown ``text`` and a plot, each where asked."""
    from pid_trt.bench.records import dump_document

    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(dump_document(records, meta))
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(text)
    if plot_path is not None:
        plot(records, plot_path)
