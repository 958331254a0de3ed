"""Resolution buckets: the output sizes each checkpoint type was trained at.

A static graph and engine serve one bucket (static spatial shape); a dynamic one serves a
:class:`ShapeRange` (a box of sizes and batches, :mod:`pid_trt.compile.dynamic`). Sizes
are output pixels, written ``WxH`` like the upstream README.

- ``2k`` checkpoints: 2048x2048, 2304x1728, 1728x2304, 2688x1536, 1536x2688, 2688x1792,
  1792x2688 (README and the training size table).
- ``2kto4k`` checkpoints: the multi-resolution grid of the ``3840`` training preset --
  levels 2048..3840 in steps of 256, for aspect ratios 1:1, 4:3, 3:4, 16:9, 9:16, each
  (W, H) = (L*sqrt(r), L/sqrt(r)) rounded to multiples of 64 and clipped to the preset's
  per-ratio ceiling -- plus the UHD sizes 3840x2160 / 2160x3840 and 4096x4096 (README
  examples, beyond the largest trained square of 3584x3584).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pid_trt.config import CkptType, NetConfig, Preset
from pid_trt.errors import ConfigError

#: Granularity of any output size (the patch size).
SIZE_MULTIPLE = 16
#: Largest side (pixels) of a dynamic-shape range: the rows of the pixel position table its
#: graphs slice (:data:`pid_trt.model.positions.PIXEL_TABLE_ROWS`).
DYNAMIC_MAX_SIDE = 8192


@dataclass(frozen=True, order=True)
class Bucket:
    """One static output size. height, width: pixels (multiples of 16)."""

    height: int
    width: int

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % SIZE_MULTIPLE:
                raise ConfigError(
                    f"bucket {name}={v!r}: expected a positive multiple of {SIZE_MULTIPLE} pixels"
                )

    @property
    def name(self) -> str:
        """``WxH``, e.g. ``3840x2160``."""
        return f"{self.width}x{self.height}"

    def tokens(self, patch_size: int = 16) -> int:
        """Image tokens L = (H / patch) * (W / patch)."""
        return (self.height // patch_size) * (self.width // patch_size)


def latent_shape(config: NetConfig, bucket: Bucket) -> tuple[int, int]:
    """Latent cells (h, w) of a bucket: ceil(H / px), ceil(W / px), px = pixels per cell."""
    px = config.pixels_per_latent
    return math.ceil(bucket.height / px), math.ceil(bucket.width / px)


_TWO_K: tuple[tuple[int, int], ...] = (
    (2048, 2048),
    (2304, 1728),
    (1728, 2304),
    (2688, 1536),
    (1536, 2688),
    (2688, 1792),
    (1792, 2688),
)  # fmt: skip  (W, H)

# Per-aspect-ratio ceiling (W, H) of the 3840 multi-resolution preset.
_CEIL_3840 = {
    (1, 1): (3584, 3584),
    (4, 3): (4096, 2816),
    (3, 4): (2816, 4096),
    (16, 9): (4096, 2176),
    (9, 16): (2176, 4096),
}
_LEVELS = range(2048, 3840 + 1, 256)
_EXTRA_4K: tuple[tuple[int, int], ...] = ((3840, 2160), (2160, 3840), (4096, 4096))


def _multires_grid() -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for (wr, hr), (wmax, hmax) in _CEIL_3840.items():
        r = wr / hr
        for level in _LEVELS:
            w = int(round(level * math.sqrt(r) / 64)) * 64
            h = int(round(level / math.sqrt(r) / 64)) * 64
            size = (min(w, wmax), min(h, hmax))
            if size not in out:
                out.append(size)
    for size in _EXTRA_4K:
        if size not in out:
            out.append(size)
    return tuple(out)


def trained_buckets(ckpt_type: CkptType) -> tuple[Bucket, ...]:
    """The trained output sizes of a checkpoint type, in the order listed above."""
    sizes = _TWO_K if ckpt_type is CkptType.K2 else _multires_grid()
    return tuple(Bucket(height=h, width=w) for (w, h) in sizes)


def parse_bucket(res: int | None = None, size: str | None = None) -> Bucket:
    """``--res N`` (square N x N) or ``--size WxH`` -> :class:`Bucket`; exactly one is given."""
    if (res is None) == (size is None):
        raise ConfigError("give exactly one of --res N (square) or --size WxH")
    if res is not None:
        return Bucket(height=int(res), width=int(res))
    height, width = parse_size(str(size))
    return Bucket(height=height, width=width)


def parse_size(text: str) -> tuple[int, int]:
    """``--size WxH`` (pixels) -> (height, width), both positive."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"--size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 3840x2160")
    w, h = (int(p) for p in parts)
    if w <= 0 or h <= 0:
        raise ConfigError(f"--size {text!r}: width and height must be positive")
    return h, w


def check_bucket(bucket: Bucket, preset: Preset | None) -> str | None:
    """A warning when ``bucket`` is outside the preset's trained sizes, else None.

    Stand-in presets (tiny, small) and custom nets have no trained set: never a warning.
    """
    if preset is None or not preset.released:
        return None
    trained = trained_buckets(preset.ckpt_type)
    if bucket in trained:
        return None
    names = ", ".join(b.name for b in trained[:8])
    more = f" and {len(trained) - 8} more" if len(trained) > 8 else ""
    return (
        f"{bucket.name} is not a trained size of {preset.name} (trained: {names}{more}); "
        "quality there is not characterised"
    )


def output_size(
    config: NetConfig, latent_hw: tuple[int, int], size: str | tuple[int, int] | None = None
) -> tuple[int, int]:
    """Output (height, width) in pixels: latent x pixels per cell, or ``size`` ("WxH" or
    (height, width)) when it rounds up to the same latent (e.g. 2160 rows from a 68-row flux
    latent: ceil(2160 / 32) = 68)."""
    if size is None:
        return config.output_size(*latent_hw)
    if isinstance(size, str):
        height, width = parse_size(size)
        shown = size
    else:
        try:
            height, width = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ConfigError(f"size {size!r}: expected (height, width) or 'WxH'") from None
        shown = f"{width}x{height}"
    p = config.pixels_per_latent
    want = (-(-height // p), -(-width // p))
    if height <= 0 or width <= 0 or height % 16 or width % 16 or want != tuple(latent_hw):
        lo_h, lo_w = (latent_hw[0] - 1) * p + 16, (latent_hw[1] - 1) * p + 16
        raise ConfigError(
            f"--size {shown}: a {latent_hw[0]}x{latent_hw[1]} latent decodes to widths {lo_w}..{latent_hw[1] * p} "
            f"and heights {lo_h}..{latent_hw[0] * p} (multiples of 16)"
        )
    return height, width


# ---------------------------------------------------------------------- dynamic ranges
def _triple(value: Any, name: str) -> tuple[int, int, int]:
    try:
        lo, opt, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} {value!r}: expected (min, opt, max)") from None
    if not 1 <= lo <= opt <= hi:
        raise ConfigError(f"{name} {lo}/{opt}/{hi}: expected 1 <= min <= opt <= max")
    return lo, opt, hi


@dataclass(frozen=True)
class ShapeRange:
    """Output sizes and batches one dynamic engine serves: a box, each side (min, opt, max).

    height / width: pixels, multiples of 16, at least two patches, at most
    :data:`DYNAMIC_MAX_SIDE`; batch: images per call. ``opt`` is the
    shape TensorRT tunes for.
    """

    height: tuple[int, int, int]
    width: tuple[int, int, int]
    batch: tuple[int, int, int] = (1, 1, 1)

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            lo, opt, hi = _triple(getattr(self, name), f"range {name}")
            for v in (lo, opt, hi):
                if v % SIZE_MULTIPLE:
                    raise ConfigError(f"range {name} {v}: expected a multiple of {SIZE_MULTIPLE} pixels")
            if lo < 2 * SIZE_MULTIPLE:
                raise ConfigError(f"range {name} min {lo}: expected at least {2 * SIZE_MULTIPLE} pixels")
            if hi > DYNAMIC_MAX_SIDE:
                raise ConfigError(
                    f"range {name} max {hi}: dynamic graphs serve at most {DYNAMIC_MAX_SIDE} pixels"
                )
            object.__setattr__(self, name, (lo, opt, hi))
        object.__setattr__(self, "batch", _triple(self.batch, "range batch"))

    # ------------------------------------------------------------------ views
    @property
    def opt_bucket(self) -> Bucket:
        return Bucket(height=self.height[1], width=self.width[1])

    def contains(self, height: int, width: int, batch: int = 1) -> bool:
        """True when a ``width`` x ``height`` output at ``batch`` lies inside the box."""
        return (
            self.height[0] <= height <= self.height[2]
            and self.width[0] <= width <= self.width[2]
            and self.batch[0] <= batch <= self.batch[2]
        )

    @property
    def name(self) -> str:
        """e.g. ``1536-2688x1536-2688 b1-2`` (widths x heights, batches)."""
        b = f"b{self.batch[0]}" if self.batch[0] == self.batch[2] else f"b{self.batch[0]}-{self.batch[2]}"
        return f"{self.width[0]}-{self.width[2]}x{self.height[0]}-{self.height[2]} {b}"

    def label(self) -> str:
        """File-name form of :attr:`name`: ``dyn1536-2688x1536-2688-b1-2``."""
        return "dyn" + self.name.replace(" ", "-")

    def fields(self) -> dict[str, Any]:
        """JSON-ready: {"height": [min, opt, max], "width": [...], "batch": [...]}."""
        return {"height": list(self.height), "width": list(self.width), "batch": list(self.batch)}

    @classmethod
    def from_fields(cls, fields: Any) -> ShapeRange:
        if not isinstance(fields, dict):
            raise ConfigError(f"shape range {fields!r}: expected an object with height, width, batch")
        return cls(tuple(fields.get("height") or ()), tuple(fields.get("width") or ()),
                   tuple(fields.get("batch") or ()))  # fmt: skip


#: Trained output sizes per checkpoint type (ARCHITECTURE §2.4), as dynamic ranges:
#: 2k: the 2K aspect ratios (2048², 2304x1728, 2688x1536, 2688x1792 and portraits) ->
#: both sides 1536..2688; 2kto4k: long edge 2048..3840 (shortest trained side 1536).
_TRAINED_RANGES: dict[CkptType, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    CkptType.K2: ((1536, 2048, 2688), (1536, 2048, 2688)),
    CkptType.K2TO4K: ((1536, 2160, 3840), (1536, 3840, 3840)),
}
#: Range of stand-in presets (tiny, small) and custom nets: CPU-sized.
STANDIN_RANGE = ((64, 128, 256), (64, 128, 256))
#: Default batch range of a dynamic build: 1 or 2 images, tuned for 1.
DEFAULT_BATCH = (1, 1, 2)


def default_range(preset: Preset | None, batch: tuple[int, int, int] = DEFAULT_BATCH) -> ShapeRange:
    """The trained range of a released preset (``2k``: 1536..2688 both sides, opt 2048x2048;
    ``2kto4k``: 1536..3840 both sides, opt 3840x2160), else :data:`STANDIN_RANGE`."""
    if preset is not None and preset.released:
        height, width = _TRAINED_RANGES[preset.ckpt_type]
    else:
        height, width = STANDIN_RANGE
    return ShapeRange(height, width, batch)


def parse_batch(text: str) -> tuple[int, int, int]:
    """``--batch N`` or ``MIN:OPT:MAX`` -> (min, opt, max)."""
    parts = str(text).split(":")
    if len(parts) not in (1, 3) or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"--batch {text!r}: expected N or MIN:OPT:MAX (positive integers)")
    vals = [int(p) for p in parts]
    return (vals[0],) * 3 if len(vals) == 1 else (vals[0], vals[1], vals[2])  # type: ignore[return-value]


def parse_range(
    min_size: str | None,
    opt_size: str | None,
    max_size: str | None,
    batch: tuple[int, int, int],
    preset: Preset | None,
) -> ShapeRange:
    """``--min-size / --opt-size / --max-size WxH`` over :func:`default_range` (each optional)."""
    from pid_trt.buckets import parse_size

    base = default_range(preset, batch)
    h, w = list(base.height), list(base.width)
    for i, text in ((0, min_size), (1, opt_size), (2, max_size)):
        if text:
            h[i], w[i] = parse_size(text)
    if opt_size is None:  # keep the default opt inside a narrowed box
        h[1], w[1] = min(max(h[1], h[0]), h[2]), min(max(w[1], w[0]), w[2])
    return ShapeRange(tuple(h), tuple(w), batch)
