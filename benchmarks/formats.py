"""Bytes and encode time per output format, through the project's own encoders, one core.

    taskset -c 0 python benchmarks/formats.py --size 2048x2048 --size 3840x2160 --json out.json

Rows: each format as ``pidtrt decode`` writes it by default (and the options named), plus
the writer before the pipeline (Pillow PNG level 6) for comparison. Best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", action="append", default=[])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from pid_trt.bench.photo import photo_like
    from pid_trt.io.encoders import OutputFormat, OutputOptions, encode_image
    from pid_trt.io.images import quantize

    rows = []
    for size in args.size or ["2048x2048"]:
        w, h = (int(v) for v in size.split("x"))
        img = photo_like(h, w, seed=1)
        px8 = quantize(img)[0].permute(1, 2, 0).contiguous().numpy()
        px16 = quantize(img, torch.uint16)[0].permute(1, 2, 0).contiguous().numpy()

        png, jpg, webp = OutputFormat.PNG, OutputFormat.JPEG, OutputFormat.WEBP
        cases = {  # name: (pixels, format, options); None: Pillow PNG level 6, the writer before
            "png (before: Pillow level 6)": None,
            "png (default, level 1)": (px8, png, OutputOptions()),
            "png --png-level 0": (px8, png, OutputOptions(png_level=0)),
            "png --bit-depth 16": (px16, png, OutputOptions(bit_depth=16)),
            "jpg (q95, 4:4:4)": (px8, jpg, OutputOptions()),
            "jpg --quality 85 (4:2:0)": (px8, jpg, OutputOptions(quality=85)),
            "webp (q95)": (px8, webp, OutputOptions()),
            "webp --webp-lossless": (px8, webp, OutputOptions(webp_lossless=True)),
        }
        for name, case in cases.items():
            best, data = float("inf"), b""
            for _ in range(args.repeat):
                t = time.perf_counter()
                data = _pil_png6(px8) if case is None else encode_image(*case)
                best = min(best, time.perf_counter() - t)
            rows.append({"size": size, "output": name, "ms": round(best * 1000, 1), "bytes": len(data)})
            print(f"{size} {name:30s} {best * 1000:8.1f} ms {len(data) / 1e6:7.2f} MB", flush=True)
    if args.json:
        meta = {"machine": os.uname().machine, "load_average": list(os.getloadavg()), "repeat": args.repeat}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


def _pil_png6(px) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


if __name__ == "__main__":
    main()
