"""The trained size envelope of each checkpoint type, as data.

PiD decodes any multiple of 16 pixels, but it was trained on a set of output sizes; beyond
them (larger than every trained size) the released checkpoints drift in colour. The envelope
of a checkpoint type is its trained sizes (:func:`pid_trt.buckets.trained_buckets`, minus
the README's example sizes that no training preset produces); a size is *inside* it when
some trained size covers it (width and height both at most that size's).

- ``2k``: 2048x2048, 2304x1728, 1728x2304, 2688x1536, 1536x2688, 2688x1792, 1792x2688.
- ``2kto4k``: the multi-resolution grid of the ``3840`` training preset (long edge 2048 ..
  4096 by aspect ratio; largest square 3584x3584). 3840x2160 is inside (4096x2176 covers
  it); 4096x4096 and 4096x3072 (README examples) are outside.
- ``tiny``, ``small`` and ``--net-config`` nets: no envelope (every size is inside) unless
  one is given (:meth:`Envelope.parse`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pid_trt.buckets import Bucket, parse_size, trained_buckets
from pid_trt.config import Preset
from pid_trt.errors import ConfigError

#: Sizes :func:`pid_trt.buckets.trained_buckets` lists for ``2kto4k`` as README examples
#: beyond the training preset's largest square (ARCHITECTURE §2.4): not part of the envelope.
README_ONLY_SIZES: frozenset[Bucket] = frozenset({Bucket(height=4096, width=4096)})


@dataclass(frozen=True)
class Envelope:
    """The trained output sizes of a net (pixels), and a name for messages (e.g. ``flux-2k``)."""

    name: str
    sizes: tuple[Bucket, ...]

    def __post_init__(self) -> None:
        if not self.sizes:
            raise ConfigError(f"envelope {self.name!r}: expected at least one trained size")

    def covers(self, height: int, width: int) -> bool:
        """True when some trained size is at least ``width`` x ``height`` on both sides."""
        return any(height <= b.height and width <= b.width for b in self.sizes)

    def describe(self, limit: int = 8) -> str:
        """``2048x2048, 2304x1728, ...`` (at most ``limit`` names, then ``and N more``)."""
        names = ", ".join(b.name for b in self.sizes[:limit])
        more = len(self.sizes) - limit
        return names + (f" and {more} more" if more > 0 else "")

    @classmethod
    def parse(cls, text: str, name: str = "given") -> Envelope:
        """``WxH[,WxH...]`` -> an envelope of those sizes (each a multiple of 16)."""
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        if not parts:
            raise ConfigError(f"envelope {text!r}: expected WIDTHxHEIGHT[,WIDTHxHEIGHT...]")
        sizes = []
        for part in parts:
            height, width = parse_size(part)
            sizes.append(Bucket(height=height, width=width))
        return cls(name, tuple(sizes))


def envelope_for(preset: Preset | None) -> Envelope | None:
    """The envelope of a released preset; None for stand-ins (tiny, small) and custom nets."""
    if preset is None or not preset.released:
        return None
    sizes = tuple(b for b in trained_buckets(preset.ckpt_type) if b not in README_ONLY_SIZES)
    return Envelope(preset.name, sizes)
