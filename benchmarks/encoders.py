"""Measure image encoders on one core: seconds and bytes per photo-like image.

    python benchmarks/encoders.py --size 2048x2048 --repeat 3 --json out.json

Each candidate encodes the same uint8 image (``pid_trt.bench.photo.photo_like`` through
``to_uint8``) ``--repeat`` times; the best time is kept (the machine is shared). PNG
candidates are decoded back and checked pixel-exact. Run under ``taskset -c 0`` for one core.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
import zlib

import numpy as np


def _pil(fmt: str, **kw):
    from PIL import Image

    def enc(px: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format=fmt, **kw)
        return buf.getvalue()

    return enc


def _zlib_png(level: int, strategy: int, filt: str):
    """Our PNG writer, its rows deflated by zlib at ``level`` with ``strategy``."""
    from pid_trt.io.encoders import png_bytes

    def deflater(rows: np.ndarray) -> bytes:
        compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
        return compressor.compress(rows) + compressor.flush()

    return lambda px: png_bytes(px, png_filter=filt, deflater=deflater)


def _default_png():
    """``png_bytes`` as the writer calls it: the default ``--png-level``."""
    from pid_trt.io.encoders import png_bytes

    return lambda px: png_bytes(px)


def _isal_png(level: int):
    """Our PNG writer, its up-filtered rows deflated by ISA-L (python-isal) at ``level`` (0..3)."""
    from isal import isal_zlib

    from pid_trt.io.encoders import png_bytes

    return lambda px: png_bytes(px, deflater=lambda rows: isal_zlib.compress(rows, level))


def _fpng(px: np.ndarray) -> bytes:
    import fpng_py

    h, w, c = px.shape
    return bytes(fpng_py.fpng_encode_image_to_memory(px.tobytes(), w, h, c))


def _simplejpeg(q: int):
    import simplejpeg

    return lambda px: simplejpeg.encode_jpeg(px, quality=q, colorspace="RGB")


def candidates() -> dict:
    c = {}
    for level in range(10):
        c[f"pil-png-L{level}"] = ("png", _pil("PNG", compress_level=level))
    c["pil-png-L6-optimize"] = ("png", _pil("PNG", compress_level=6, optimize=True))
    for filt in ("none", "sub", "up", "paeth"):
        for level in (1, 2, 3):
            c[f"zlib-{filt}-L{level}"] = ("png", _zlib_png(level, zlib.Z_DEFAULT_STRATEGY, filt))
        c[f"zlib-{filt}-L1-rle"] = ("png", _zlib_png(1, zlib.Z_RLE, filt))
        c[f"zlib-{filt}-L1-filtered"] = ("png", _zlib_png(1, zlib.Z_FILTERED, filt))
    try:
        import isal  # noqa: F401

        for level in range(4):
            c[f"isal-up-L{level}"] = ("png", _isal_png(level))
    except ImportError:
        pass
    c["default-png"] = ("png", _default_png())
    try:
        import fpng_py  # noqa: F401

        c["fpng"] = ("png", _fpng)
    except ImportError:
        pass
    for q in (90, 95):
        c[f"pil-jpeg-q{q}"] = ("jpeg", _pil("JPEG", quality=q))
    try:
        import simplejpeg  # noqa: F401

        c["simplejpeg-q95"] = ("jpeg", _simplejpeg(95))
    except ImportError:
        pass
    c["pil-webp-q95-m0"] = ("webp", _pil("WEBP", quality=95, method=0))
    c["pil-webp-q95-m4"] = ("webp", _pil("WEBP", quality=95, method=4))
    c["pil-webp-lossless-m0"] = ("webp", _pil("WEBP", lossless=True, quality=0, method=0))
    c["pil-png16-L1"] = ("png16", None)
    return c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="2048x2048")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from PIL import Image

    from pid_trt.bench.photo import photo_like
    from pid_trt.io.encoders import png_bytes
    from pid_trt.io.images import quantize, to_uint8

    w, h = (int(v) for v in args.size.split("x"))
    img = photo_like(h, w, seed=1)
    px = to_uint8(img)[0].numpy()
    px16 = quantize(img, torch.uint16)[0].permute(1, 2, 0).contiguous().numpy()
    rows = []
    for name, (kind, enc) in candidates().items():
        if args.only and args.only not in name:
            continue
        if kind == "png16":
            enc = lambda _px: png_bytes(px16, level=1)  # noqa: E731
        best, data = float("inf"), b""
        for _ in range(args.repeat):
            t = time.perf_counter()
            data = enc(px)
            best = min(best, time.perf_counter() - t)
        exact = None
        if kind == "png":
            exact = bool(np.array_equal(np.asarray(Image.open(io.BytesIO(data))), px))
        rows.append(
            {"encoder": name, "format": kind, "seconds": round(best, 4), "bytes": len(data), "exact": exact}
        )
        print(f"{name:28s} {best * 1000:8.1f} ms {len(data) / 1e6:8.2f} MB exact={exact}", flush=True)
    if args.json:
        meta = {"size": args.size, "cpu": os.uname().machine, "load": os.getloadavg(), "repeat": args.repeat}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
