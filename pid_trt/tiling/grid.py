"""A grid of overlapping tiles over one output image, on the latent grid, and its blend weights.

Units: pixels. ``unit`` = lcm(pixels per latent cell, patch size): every tile's top-left
corner and size are multiples of it, so each tile's latent crop is exact (whole cells) and
each tile is a valid image (whole patches). The last tile of a row or column ends at the
image edge; when the image is not a whole number of units (e.g. 2160 rows of a 68-row flux
latent) that tile is shorter than the others by less than one unit.

Blend weights: along each axis a tile's raw weight is 1, ramping down over the overlap with
each neighbour as cos² (and the neighbour ramping up as sin² over the same pixels, so the
two sum to one), then normalised by the sum over tiles (exact partition of unity even where
three tiles overlap). A tile's 2-D weight is the product of its column's and its row's
weights, so the weights of all tiles sum to one at every pixel; they are C¹ across seams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from pid_trt.config import NetConfig
from pid_trt.errors import ConfigError
from pid_trt.tiling.options import TileOptions

if TYPE_CHECKING:
    import torch

#: Default overlap: this fraction of the tile's shorter side (rounded down to the grid, at
#: least one unit). 256 px for 2048-px tiles.
DEFAULT_OVERLAP_FRACTION = 1 / 8


def grid_unit(config: NetConfig) -> int:
    """Pixels every tile corner and size are a multiple of: lcm(pixels per latent cell, patch)."""
    return math.lcm(config.pixels_per_latent, config.patch_size)


def default_overlap(tile_height: int, tile_width: int, unit: int) -> int:
    """:data:`DEFAULT_OVERLAP_FRACTION` of the shorter tile side, on the grid, >= one unit."""
    return max(unit, int(min(tile_height, tile_width) * DEFAULT_OVERLAP_FRACTION) // unit * unit)


@dataclass(frozen=True)
class Tile:
    """One tile: its window of the image (pixels) and its place in the grid."""

    row: int
    col: int
    top: int
    left: int
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.height, self.width

    def latent_window(self, cell: int) -> tuple[slice, slice]:
        """Rows and columns of the latent this tile decodes (``cell`` pixels per latent cell)."""
        return (
            slice(self.top // cell, -(-(self.top + self.height) // cell)),
            slice(self.left // cell, -(-(self.left + self.width) // cell)),
        )

    def pixel_window(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def _starts(length: int, unit: int, tile: int, count: int, axis: str) -> tuple[int, ...]:
    """``count`` tile starts (pixels) spread evenly over an axis of ``length`` pixels, on the
    grid, the first at 0 and the last ending at the end of the latent extent."""
    n = -(-length // unit)  # units the latent extent spans
    t = tile // unit
    if count == 1:
        return (0,)
    span = n - t
    if span < count - 1:
        raise ConfigError(
            f"{count} tile {axis}s of {tile} px over {length} px: too many; expected at most "
            f"{span + 1} (one start per {unit}-px grid step)"
        )
    return tuple(((2 * i * span + (count - 1)) // (2 * (count - 1))) * unit for i in range(count))


def _axis_weights(starts: tuple[int, ...], ends: tuple[int, ...], length: int) -> torch.Tensor:
    """Normalised 1-D blend weights [tiles, length] float64 (zero outside each tile)."""
    import torch  # here, so that planning (pid_trt.tiling.plan) never imports torch

    k = len(starts)
    raw = torch.zeros(k, length, dtype=torch.float64)
    pos = torch.arange(length, dtype=torch.float64) + 0.5
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        w = torch.zeros(length, dtype=torch.float64)
        w[s:e] = 1.0
        if i > 0 and ends[i - 1] > s:  # ramp up over the overlap with the previous tile
            r = ends[i - 1] - s
            u = (pos[s : s + r] - s) / r
            w[s : s + r] *= torch.sin(0.5 * math.pi * u) ** 2
        if i < k - 1 and e > starts[i + 1]:  # ramp down over the overlap with the next tile
            s2 = starts[i + 1]
            r = e - s2
            u = (pos[s2:e] - s2) / r
            w[s2:e] *= torch.cos(0.5 * math.pi * u) ** 2
        raw[i] = w
    total = raw.sum(0)
    if bool((total <= 0).any()):  # cannot happen for a grid make_grid accepted
        raise ConfigError(f"tile starts {starts} / ends {ends} leave pixels of a {length}-px axis uncovered")
    return raw / total


@dataclass(frozen=True)
class TileGrid:
    """Tiles over a ``width`` x ``height`` image: column starts ``lefts``, row starts ``tops``,
    nominal tile size ``tile_height`` x ``tile_width`` (the last row / column ends at the image
    edge). ``cell``: pixels per latent cell; ``unit``: the grid step (see module docstring)."""

    height: int
    width: int
    tile_height: int
    tile_width: int
    tops: tuple[int, ...]
    lefts: tuple[int, ...]
    cell: int
    unit: int

    @property
    def rows(self) -> int:
        return len(self.tops)

    @property
    def cols(self) -> int:
        return len(self.lefts)

    @property
    def count(self) -> int:
        return self.rows * self.cols

    def _ends(self, starts: tuple[int, ...], tile: int, length: int) -> tuple[int, ...]:
        return tuple(min(s + tile, length) for s in starts)

    @cached_property
    def tiles(self) -> tuple[Tile, ...]:
        """Row-major tiles."""
        bottoms = self._ends(self.tops, self.tile_height, self.height)
        rights = self._ends(self.lefts, self.tile_width, self.width)
        return tuple(
            Tile(r, c, top, left, bottom - top, right - left)
            for r, (top, bottom) in enumerate(zip(self.tops, bottoms, strict=True))
            for c, (left, right) in enumerate(zip(self.lefts, rights, strict=True))
        )

    def shapes(self) -> dict[tuple[int, int], int]:
        """Tile (height, width) -> number of tiles of that shape, most common first."""
        counts: dict[tuple[int, int], int] = {}
        for tile in self.tiles:
            counts[tile.shape] = counts.get(tile.shape, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def overlaps(self) -> tuple[int, int]:
        """Smallest overlap (pixels) between neighbouring (columns, rows); 0 with one of them."""

        def smallest(starts: tuple[int, ...], tile: int, length: int) -> int:
            ends = self._ends(starts, tile, length)
            return min((ends[i] - starts[i + 1] for i in range(len(starts) - 1)), default=0)

        return (
            smallest(self.lefts, self.tile_width, self.width),
            smallest(self.tops, self.tile_height, self.height),
        )

    @cached_property
    def axis_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row weights [rows, height], column weights [cols, width]) float32, each normalised
        to sum to one over tiles at every pixel."""
        wy = _axis_weights(self.tops, self._ends(self.tops, self.tile_height, self.height), self.height)
        wx = _axis_weights(self.lefts, self._ends(self.lefts, self.tile_width, self.width), self.width)
        return wy.float(), wx.float()

    def weight(self, tile: Tile) -> torch.Tensor:
        """The tile's blend weight [tile.height, tile.width] float32."""
        wy, wx = self.axis_weights
        ys, xs = tile.pixel_window()
        return wy[tile.row, ys][:, None] * wx[tile.col, xs][None, :]

    def describe(self) -> str:
        """e.g. ``3x2 = 6 tiles of 2304x1728, overlap >= 256x320 px`` (overlap: columns x rows)."""
        ox, oy = self.overlaps()
        shapes = ", ".join(f"{n} x {w}x{h}" for (h, w), n in self.shapes().items())
        return f"{self.cols}x{self.rows} = {self.count} tile(s) ({shapes}), overlap {ox}x{oy} px"


def _check_tile_side(value: int, unit: int, cell: int, what: str) -> None:
    if value % unit:
        lo, hi = value // unit * unit, -(-value // unit) * unit
        near = f"{lo} or {hi}" if lo else f"{hi}"
        raise ConfigError(
            f"{what} {value} px is not on the latent grid: expected a multiple of {unit} px "
            f"({cell} px per latent cell), e.g. {near}"
        )


def _even_split(
    grid: tuple[int, int], ext_h: int, ext_w: int, unit: int, overlap: int | None
) -> tuple[int, int]:
    """Tile (height, width) that splits the latent extent into ``grid`` (cols, rows) tiles
    overlapping by at least ``overlap`` px (default: an eighth of the evenly split tile)."""
    cols, rows = grid
    sides = []
    for count, ext, axis in ((rows, ext_h, "row"), (cols, ext_w, "column")):
        n = ext // unit
        if count > n:
            raise ConfigError(
                f"--tiles {cols}x{rows}: {count} {axis}s over {ext} px: expected at most {n} "
                f"(tiles of at least {unit} px)"
            )
        if count == 1:
            sides.append(ext)
            continue
        o = (
            overlap
            if overlap is not None
            else default_overlap(-(-n // count) * unit, -(-n // count) * unit, unit)
        )
        sides.append(min(ext, -(-(n + (count - 1) * (o // unit)) // count) * unit))
    return sides[0], sides[1]


def make_grid(
    config: NetConfig,
    height: int,
    width: int,
    tile_size: tuple[int, int] | None,
    options: TileOptions,
) -> TileGrid:
    """The tile grid for a ``width`` x ``height`` image (pixels, multiples of 16).

    ``tile_size`` (height, width): the tile (grid mode: None splits the image evenly into
    ``options.grid``). The overlap is ``options.overlap`` or :func:`default_overlap`; in auto
    mode the grid has the fewest tiles that keep at least that overlap. Raises ConfigError
    (one line) for a tile off the latent grid, larger than the image, an overlap >= the tile,
    or a grid that leaves a gap.
    """
    cell, unit = config.pixels_per_latent, grid_unit(config)
    ext_h, ext_w = -(-height // unit) * unit, -(-width // unit) * unit  # latent extent on the grid
    if options.overlap:
        _check_tile_side(options.overlap, unit, cell, "--tile-overlap")
    if options.grid is not None and tile_size is None:
        tile_size = _even_split(options.grid, ext_h, ext_w, unit, options.overlap)
    if tile_size is None:
        raise ConfigError("tiles need a tile size: pass --tile-size WxH or --tiles COLSxROWS")
    tile_h, tile_w = tile_size
    _check_tile_side(tile_w, unit, cell, "--tile-size width")
    _check_tile_side(tile_h, unit, cell, "--tile-size height")
    if tile_h > ext_h or tile_w > ext_w:
        raise ConfigError(
            f"--tile-size {tile_w}x{tile_h} is larger than the {width}x{height} image: expected at most "
            f"{min(tile_w, ext_w)}x{min(tile_h, ext_h)} (or decode in one shot: --tiles off)"
        )
    overlap = options.overlap if options.overlap is not None else default_overlap(tile_h, tile_w, unit)
    counts = []
    for tile, ext, idx, axis in ((tile_h, ext_h, 1, "row"), (tile_w, ext_w, 0, "column")):
        n, t, o = ext // unit, tile // unit, overlap // unit
        if options.grid is not None:
            k = options.grid[idx]
            if k * t < n:
                raise ConfigError(
                    f"--tiles {options.grid[0]}x{options.grid[1]} with --tile-size {tile_w}x{tile_h} leaves a gap: "
                    f"{k} {axis}(s) of {tile} px cover {k * tile} of {ext} px; expected {axis}s x tile >= "
                    f"{ext} px"
                )
        elif t >= n:
            k = 1
        else:
            oc = min(o, t - 1)  # the default overlap of a one-unit tile: none
            k = -(-(n - oc) // (t - oc))
        if k > 1 and options.overlap is not None and o >= t:
            raise ConfigError(
                f"--tile-overlap {overlap} px with {tile_w}x{tile_h} tiles: expected less than the tile "
                f"{'height' if axis == 'row' else 'width'} ({tile} px)"
            )
        counts.append(k)
    rows, cols = counts
    grid = TileGrid(
        height, width, tile_h, tile_w, _starts(height, unit, tile_h, rows, "row"),
        _starts(width, unit, tile_w, cols, "column"), cell, unit,
    )  # fmt: skip
    if options.grid is not None and options.overlap is not None:
        ox, oy = grid.overlaps()
        short = [
            (o, a) for o, a, k in ((ox, "columns", cols), (oy, "rows", rows)) if k > 1 and o < options.overlap
        ]
        if short:
            o, axis = short[0]
            raise ConfigError(
                f"--tiles {cols}x{rows} with --tile-size {tile_w}x{tile_h} on {width}x{height}: neighbouring "
                f"{axis} overlap {o} px, expected at least --tile-overlap {options.overlap} px"
            )
    return grid
