"""The verify report: tables (text and Markdown), ``report.json``, ``report.md``, the per-step
error plot (``steps.png``, matplotlib, optional) and side-by-side crops of the worst region
(``worst_crop.png``: reference | candidate | |d| scaled to its maximum)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pid_trt.verify.bounds import Bound
from pid_trt.verify.metrics import Figures, format_db
from pid_trt.verify.pairs import Check, InputResult, PairRequest, VerifyInput

REPORT_FORMAT = "pid-trt-verify/1"
PLOT_FILE = "steps.png"
CROP_FILE = "worst_crop.png"
#: Edge of the crop window in output pixels (smaller images are shown whole).
CROP_EDGE = 64


def _bound_text(bound: Bound | None) -> str:
    return bound.describe() if bound is not None else "(reported)"


def _rows(result: InputResult, bounds: dict[str, Bound | None], checks: Sequence[Check]):
    verdict = {c.output: c.ok for c in checks if c.input == result.name}
    for i, figs in enumerate(result.steps):
        yield f"step {i} (t={result.ts[i]:g})", figs, bounds["velocity"], verdict.get(figs.name)
    yield "image", result.image, bounds["image"], verdict.get("image")


def _ok(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "NO")


def text_table(
    results: Sequence[InputResult], bounds: dict[str, Bound | None], checks: Sequence[Check]
) -> str:
    """Fixed-width table, one block per input."""
    head = (
        f"{'output':<18} {'max|d|':>10} {'mean|d|':>10} {'PSNR dB':>8} {'SNR dB':>8} "
        f"{'cosine':>10} {'bound':<18} {'ok':>3}"
    )
    lines = []
    for r in results:
        lines += [f"{r.name}", head, "-" * len(head)]
        for label, f, bound, ok in _rows(r, bounds, checks):
            lines.append(
                f"{label:<18} {f.max_abs:>10.3g} {f.mean_abs:>10.3g} {format_db(f.psnr_db):>8} "
                f"{format_db(f.snr_db):>8} {f.cosine:>10.7f} {_bound_text(bound):<18} {_ok(ok):>3}"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


def markdown_table(result: InputResult, bounds: dict[str, Bound | None], checks: Sequence[Check]) -> str:
    lines = [
        "| output | max abs | mean abs | PSNR dB | SNR dB | cosine | bound | ok |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, f, bound, ok in _rows(result, bounds, checks):
        lines.append(
            f"| {label} | {f.max_abs:.3g} | {f.mean_abs:.3g} | {format_db(f.psnr_db)} | {format_db(f.snr_db)} "
            f"| {f.cosine:.7f} | {_bound_text(bound)} | {_ok(ok)} |"
        )
    return "\n".join(lines)


def _bound_json(bound: Bound | None) -> dict[str, Any] | None:
    if bound is None:
        return None
    return {"figure": bound.figure, "limit": bound.limit, "text": bound.describe(), "source": bound.source}


def _figs(f: Figures, t: float | None = None) -> dict[str, Any]:
    out = f.as_dict()
    if t is not None:
        out["t"] = t
    return out


def step_plot(results: Sequence[InputResult], bounds: dict[str, Bound | None], path: Path) -> str | None:
    """Per-step max |d| and PSNR of every input (and the image as the last point); returns None
    when written, else the one-line reason (matplotlib absent)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no per-step plot: matplotlib is not installed ({exc}); pip install matplotlib"
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in results:
        figs = [*r.steps, r.image]
        xs = list(range(len(figs)))
        ax0.plot(xs, [max(f.max_abs, 1e-12) for f in figs], marker="o", label=r.name)
        ax1.plot(xs, [min(f.psnr_db, 200.0) for f in figs], marker="o", label=r.name)
    labels = [f"step {i}" for i in range(len(results[0].steps))] + ["image"] if results else []
    for ax, title in ((ax0, "max |d| (log)"), (ax1, "PSNR dB (range 2; inf shown as 200)")):
        ax.set_xticks(range(len(labels)), labels)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax0.set_yscale("log")
    for which, style in (("velocity", ":"), ("image", "--")):
        b = bounds[which]
        if b is not None:
            ax = ax0 if b.figure == "max_abs" else ax1
            ax.axhline(b.limit, ls=style, lw=1, c="r", label=f"{which}: {b.describe()}")
    ax0.legend(fontsize=7)
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def worst_crop(results: Sequence[InputResult], path: Path) -> dict[str, Any]:
    """Side-by-side crops (reference | candidate | |d|) of the worst CROP_EDGE window of the
    input whose image differs most; returns where it is (input, batch index, box)."""
    from PIL import Image

    from pid_trt.io.images import to_uint8

    r = max(results, key=lambda r: r.image.mean_abs if math.isfinite(r.image.mean_abs) else math.inf)
    diff = (r.candidate_image - r.reference_image).abs().nan_to_num(nan=4.0).mean(dim=1)  # [B, H, W]
    b_idx = int(diff.flatten(1).mean(1).argmax())
    _, h, w = diff.shape
    ch, cw = min(CROP_EDGE, h), min(CROP_EDGE, w)
    pooled = torch.nn.functional.avg_pool2d(
        diff[b_idx][None, None], (ch, cw), stride=(max(ch // 4, 1), max(cw // 4, 1))
    )
    pos = int(pooled.flatten().argmax())
    py, px = divmod(pos, pooled.shape[-1])
    y0, x0 = py * max(ch // 4, 1), px * max(cw // 4, 1)
    box = (slice(y0, y0 + ch), slice(x0, x0 + cw))
    ref = to_uint8(r.reference_image[b_idx : b_idx + 1, :, box[0], box[1]])[0].numpy()
    cand = to_uint8(r.candidate_image[b_idx : b_idx + 1, :, box[0], box[1]])[0].numpy()
    d = diff[b_idx][box]
    scale = float(d.max()) or 1.0
    heat = (d / scale * 255).clamp(0, 255).to(torch.uint8)[..., None].expand(-1, -1, 3).numpy()
    gap = 4
    canvas = Image.new("RGB", (3 * cw + 2 * gap, ch), (255, 255, 255))
    for i, arr in enumerate((ref, cand, heat)):
        canvas.paste(Image.fromarray(arr), (i * (cw + gap), 0))
    zoom = max(1, 192 // ch)
    canvas.resize((canvas.width * zoom, canvas.height * zoom), Image.Resampling.NEAREST).save(path)
    return {
        "input": r.name,
        "batch_index": b_idx,
        "y": y0,
        "x": x0,
        "height": ch,
        "width": cw,
        "diff_max": scale,
    }


def build_report(
    *,
    header: dict[str, Any],
    results: Sequence[InputResult],
    bounds: dict[str, Bound | None],
    checks: Sequence[Check],
    layers: Any | None = None,
    layers_note: str | None = None,
) -> dict[str, Any]:
    """The JSON-ready report."""
    failed = [c.describe() for c in checks if not c.ok]
    return {
        "format": REPORT_FORMAT,
        **header,
        "bounds": {k: _bound_json(v) for k, v in bounds.items()},
        "inputs": [
            {
                "name": r.name,
                "seed": r.seed,
                "steps": [_figs(f, r.ts[i]) for i, f in enumerate(r.steps)],
                "image": _figs(r.image),
            }
            for r in results
        ],
        "checks": [
            {
                "input": c.input,
                "output": c.output,
                "figure": c.figure,
                "value": c.value if math.isfinite(c.value) else str(c.value),
                "bound": c.bound.describe(),
                "ok": c.ok,
            }
            for c in checks
        ],  # fmt: skip
        "passed": not failed,
        "failed": failed,
        "layers": layers.as_dict() if layers is not None else None,
        "layers_note": layers_note,
    }


def write_report(
    out_dir: Path,
    report: dict[str, Any],
    results: Sequence[InputResult],
    bounds: dict[str, Bound | None],
    checks: Sequence[Check],
    layers_text: str | None = None,
) -> tuple[list[Path], dict[str, Any]]:
    """Write report.json, report.md, steps.png (when matplotlib is there) and worst_crop.png;
    returns the files written and the report's ``files`` section."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_note = step_plot(results, bounds, out_dir / PLOT_FILE) if results else "no inputs"
    crop = worst_crop(results, out_dir / CROP_FILE) if results else None
    report = dict(report, files={"plot": None if plot_note else PLOT_FILE, "plot_note": plot_note,
                                 "crop": CROP_FILE if crop else None, "crop_region": crop})  # fmt: skip
    written = [out_dir / "report.json", out_dir / "report.md"]
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [
        f"# pidtrt verify: {report['candidate']} against {report['reference']}",
        "",
        f"- command: `{report['command']}`",
        f"- net: {report['net']}, weights {report['weights']}; output {report['size']}, {report['steps']} steps; "
        f"device {report['device']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
        f"- verdict: **{'PASS' if report['passed'] else 'FAIL'}**"
        + ("" if report["passed"] else f" ({len(report['failed'])} figure(s) outside their bound)"),
        "",
        "Per step: the candidate's velocity on the reference's x (one network call's error); image: each "
        "side's own 4-step decode from the same noise. PSNR at range 2 (images in [-1, 1]); SNR with the "
        "reference as signal; figures by Polygraphy's comparison functions.",
        "",
        "## Bounds",
        "",
        "| output | bound | source |",
        "|---|---|---|",
    ]
    for k, b in bounds.items():
        md.append(
            f"| {k} | {_bound_text(b)} | {b.source if b else 'no test holds a number yet: reported only'} |"
        )
    if report["failed"]:
        md += ["", "## Outside the bound", "", *[f"- {f}" for f in report["failed"]]]
    for r in results:
        md += ["", f"## {r.name}", "", markdown_table(r, bounds, checks)]
    md += ["", "## Per-step errors", ""]
    md.append(f"![per-step errors]({PLOT_FILE})" if not plot_note else f"_{plot_note}_")
    if crop:
        md += [
            "",
            "## Worst region",
            "",
            f"{crop['input']}, batch {crop['batch_index']}, {crop['width']}x{crop['height']} at "
            f"(x={crop['x']}, y={crop['y']}); left to right: reference, candidate, |d| (white = {crop['diff_max']:.3g}).",
            "",
            f"![worst region]({CROP_FILE})",
        ]
        written.append(out_dir / CROP_FILE)
    if layers_text or report.get("layers_note"):
        md += ["", "## Step graph, layer by layer", ""]
        if report.get("layers_note"):
            md.append(f"_{report['layers_note']}_")
        if layers_text:
            md += ["```", layers_text, "```"]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    if not plot_note:
        written.append(out_dir / PLOT_FILE)
    return written, report["files"]


#: Distributions whose versions the report's header records (those installed).
REPORT_PACKAGES = (
    "pid-trt",
    "torch",
    "onnxruntime",
    "polygraphy",
    "tensorrt-rtx-cu12-bindings",
    "tensorrt-cu12",
)


def report_header(command: str, request: PairRequest, inputs: list[VerifyInput]) -> dict[str, Any]:
    """The report's header: the command line, the net and its weights, the pair, the device,
    the first input's size, the steps and the installed versions of :data:`REPORT_PACKAGES`."""
    from pid_trt.versions import package_versions

    spec, c0 = request.spec, inputs[0].cond
    return {
        "command": command,
        "net": spec.name,
        "weights": str(spec.checkpoint) if spec.checkpoint else f"random:{spec.weights_seed}",
        "reference": request.reference.label,
        "candidate": request.candidate.label,
        "device": request.device,
        "size": f"{c0.width}x{c0.height}",
        "steps": request.steps,
        "versions": package_versions(REPORT_PACKAGES),
    }
