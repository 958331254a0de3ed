"""Tile grids on the latent grid and their blend weights: every pixel covered, weights sum to
one and are smooth across seams, crops exact; every bad tile option is a one-line error."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pid_trt.config import TINY, get_preset
from pid_trt.errors import ConfigError
from pid_trt.tiling import TileOptions, make_grid

CELL = 32  # tiny: latent down factor 8 x sr scale 4 (ARCHITECTURE §2.4: flux/sd3 32 px per cell)


def _weight_sum(grid) -> torch.Tensor:
    total = torch.zeros(grid.height, grid.width, dtype=torch.float64)
    for tile in grid.tiles:
        ys, xs = tile.pixel_window()
        total[ys, xs] += grid.weight(tile).double()
    return total


def _coverage(grid) -> torch.Tensor:
    cover = torch.zeros(grid.height, grid.width, dtype=torch.int32)
    for tile in grid.tiles:
        ys, xs = tile.pixel_window()
        cover[ys, xs] += 1
    return cover


grids = st.tuples(
    st.integers(1, 24),  # image rows in latent cells
    st.integers(1, 24),  # image columns
    st.integers(1, 12),  # tile rows
    st.integers(1, 12),  # tile columns
    st.integers(0, 6),  # overlap in cells
    st.booleans(),  # crop the image by 16 px (not a whole number of latent cells)
)


def _grid_from(case):
    rows, cols, th, tw, ov, crop = case
    th, tw = min(th, rows), min(tw, cols)
    height, width = rows * CELL - (16 if crop else 0), cols * CELL - (16 if crop else 0)
    if ov >= min(th, tw):
        ov = min(th, tw) - 1
    return make_grid(TINY, height, width, (th * CELL, tw * CELL), TileOptions(overlap=ov * CELL))


@settings(max_examples=150, deadline=None)
@given(grids)
def test_weights_sum_to_one_and_every_pixel_is_covered(case) -> None:
    grid = _grid_from(case)
    assert int(_coverage(grid).min()) >= 1
    total = _weight_sum(grid)
    assert float((total - 1).abs().max()) <= 1e-6
    for tile in grid.tiles:
        assert tile.top % CELL == 0 and tile.left % CELL == 0  # latent crops are whole cells
        assert tile.height % 16 == 0 and tile.width % 16 == 0
        assert float(grid.weight(tile).min()) >= 0.0


@settings(max_examples=100, deadline=None)
@given(grids)
def test_weights_are_smooth_across_seams(case) -> None:
    """Between neighbouring pixels a weight changes by at most pi / (2 x ramp) + rounding: the
    cos^2 ramp's largest slope, the ramp spanning the overlap (or, where three tiles overlap,
    the distance between tile starts), at least one latent cell here."""
    grid = _grid_from(case)
    ox, oy = grid.overlaps()

    def ramp(overlap: int, starts: tuple[int, ...]) -> int:
        strides = [b - a for a, b in zip(starts[:-1], starts[1:], strict=True)]
        return min([overlap, *strides])

    for tile in grid.tiles:
        w = grid.weight(tile).double()
        for axis, r in ((0, ramp(oy, grid.tops)), (1, ramp(ox, grid.lefts))):
            if w.shape[axis] < 2:
                continue
            step = float(w.diff(dim=axis).abs().max())
            if r:
                assert step <= math.pi / (2 * r) + 1e-6, (tile, axis, step, r)


def test_weights_ramp_in_the_overlap_only() -> None:
    """Two columns of 128 px over 192 px, overlap 64: 1 outside the overlap, cos^2 / sin^2 in it."""
    grid = make_grid(TINY, 64, 192, (64, 128), TileOptions(overlap=64))
    assert (grid.cols, grid.rows, grid.lefts) == (2, 1, (0, 64))
    left, right = grid.tiles
    wl, wr = grid.weight(left)[0].double(), grid.weight(right)[0].double()
    assert torch.equal(wl[:64], torch.ones(64, dtype=torch.float64))
    assert torch.equal(wr[64:], torch.ones(64, dtype=torch.float64))
    u = (torch.arange(64, dtype=torch.float64) + 0.5) / 64
    assert torch.allclose(wl[64:], torch.cos(0.5 * math.pi * u) ** 2, atol=1e-7)
    assert torch.allclose(wr[:64], torch.sin(0.5 * math.pi * u) ** 2, atol=1e-7)


def test_one_by_one_grid_is_the_whole_image_with_weight_one() -> None:
    grid = make_grid(TINY, 160, 224, None, TileOptions.create(tiles="1x1"))
    (tile,) = grid.tiles
    assert (tile.top, tile.left, tile.height, tile.width) == (0, 0, 160, 224)
    assert torch.equal(grid.weight(tile), torch.ones(160, 224))


def test_grid_mode_without_tile_size_splits_evenly_with_the_overlap() -> None:
    # 12 cells wide into 3 columns overlapping by >= 2 cells: ceil((12 + 2*2) / 3) = 6 cells
    grid = make_grid(TINY, 128, 384, None, TileOptions.create(tiles="3x1", tile_overlap=64))
    assert (grid.tile_width, grid.lefts, grid.overlaps()[0]) == (192, (0, 96, 192), 96)


def test_last_tile_ends_at_the_image_edge_when_the_size_is_cropped() -> None:
    """flux2 (64 px per cell) at 7680x4320 from a 68-row latent: rows end at 4320."""
    config = get_preset("flux2", "2kto4k").config
    grid = make_grid(config, 4320, 7680, (2368, 1792), TileOptions(overlap=256))
    assert grid.tiles[-1].top + grid.tiles[-1].height == 4320
    assert all(t.top % 64 == 0 and t.left % 64 == 0 for t in grid.tiles)
    ys, _ = grid.tiles[-1].latent_window(64)
    assert ys.stop == 68


@pytest.mark.parametrize(
    ("height", "width", "kwargs", "match"),
    [
        (256, 256, dict(tile_size="100x128"), r"--tile-size width 100 px is not on the latent grid: expected a multiple of 32"),
        (256, 256, dict(tile_size="128x120"), r"--tile-size height 120 px is not on the latent grid"),
        (256, 256, dict(tile_size="128x128", tile_overlap=40), r"--tile-overlap 40 px is not on the latent grid"),
        (256, 256, dict(tile_size="128x128", tile_overlap=128), r"--tile-overlap 128 px with 128x128 tiles: expected less than the tile height \(128 px\)"),
        (256, 256, dict(tile_size="512x128"), r"--tile-size 512x128 is larger than the 256x256 image: expected at most 256x128"),
        (256, 512, dict(tiles="2x2", tile_size="128x128"), r"--tiles 2x2 with --tile-size 128x128 leaves a gap: 2 column"),
        (256, 256, dict(tiles="9x1"), r"--tiles 9x1: 9 columns over 256 px: expected at most 8"),
        (256, 512, dict(tiles="2x1", tile_size="320x256", tile_overlap=160), r"neighbouring columns overlap 128 px, expected at least --tile-overlap 160"),
    ],
)  # fmt: skip
def test_bad_tile_option_is_a_one_line_error(height, width, kwargs, match) -> None:
    options = TileOptions.create(**{"tiles": "auto", **kwargs})
    with pytest.raises(ConfigError, match=match) as err:
        make_grid(TINY, height, width, options.tile_size, options)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(tiles="sometimes"), r"--tiles 'sometimes': expected auto, off or COLSxROWS"),
        (dict(tiles="0x2"), r"--tiles '0x2': expected auto, off or COLSxROWS \(e.g. 3x2\) with both numbers positive"),
        (dict(tile_size="big"), r"--tile-size 'big': expected WIDTHxHEIGHT in pixels"),
        (dict(tile_batch=0), r"--tile-batch 0: expected an integer >= 1"),
        (dict(tile_overlap=-32), r"--tile-overlap -32: expected an integer >= 0"),
        (dict(tiles="off", tile_size="128x128"), r"--tile-size with --tiles off: expected --tiles auto or COLSxROWS"),
        (dict(allow_untrained_size="yes"), r"allow_untrained_size='yes': expected True or False"),
    ],
)  # fmt: skip
def test_bad_option_value_is_a_one_line_error(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        TileOptions.create(**kwargs)
    assert "\n" not in str(err.value)
