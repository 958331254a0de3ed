"""Resolution buckets: the output sizes each checkpoint type was trained at.

An exported graph and a built engine each serve one bucket (static spatial shape). Sizes
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

from pid_trt.config import CkptType, DecoderConfig, Preset
from pid_trt.errors import ConfigError

#: Granularity of any output size (the patch size).
SIZE_MULTIPLE = 16


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


def bucket_for_latent(config: DecoderConfig, latent_h: int, latent_w: int) -> Bucket:
    """The bucket a latent of (latent_h, latent_w) cells decodes into."""
    height, width = config.output_size(latent_h, latent_w)
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise ConfigError(f"latent {latent_h}x{latent_w} gives {width}x{height}: not a multiple of 16 pixels")
    return Bucket(height=height, width=width)


def output_size(
    config: DecoderConfig, latent_hw: tuple[int, int], size: str | tuple[int, int] | None = None
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
