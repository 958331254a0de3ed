"""Tiled decoding in the sampler: a 1x1 grid is the untiled decode bit for bit; with a
per-pixel stand-in network tiled equals untiled to float precision at any grid and overlap;
tile batches equal tiles one at a time; torch and ONNX Runtime agree tiled as untiled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pid_trt import Decoder
from pid_trt.backends.base import Conditioning
from pid_trt.config import TINY
from pid_trt.sampling import draw_noise, sample
from pid_trt.tiling import TiledDenoiser, TileOptions, make_grid

CELL = TINY.pixels_per_latent  # 32


def _cond(batch: int, lat_h: int, lat_w: int, seed: int = 0, crop: int = 0) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(batch, TINY.lq_latent_channels, lat_h, lat_w, generator=g)
    caption = torch.randn(batch, TINY.txt_max_length, TINY.txt_embed_dim, generator=g)
    sigma = torch.rand(batch, generator=g)
    return Conditioning(latent, caption, sigma, lat_h * CELL - crop, lat_w * CELL - crop)


def per_pixel_bind(cond: Conditioning):
    """A stand-in network: the velocity at a pixel depends only on that pixel, the latent cell
    under it (pixel repetition, 32 px per cell), the caption and sigma of its row, and t."""
    up = cond.latent.mean(1, keepdim=True).repeat_interleave(CELL, 2).repeat_interleave(CELL, 3)
    up = up[:, :, : cond.height, : cond.width]
    row = (cond.caption.mean((1, 2)) + cond.degrade_sigma).reshape(-1, 1, 1, 1)

    def denoise(x: torch.Tensor, t: float) -> torch.Tensor:
        assert tuple(x.shape[-2:]) == (cond.height, cond.width)
        return torch.tanh(1.7 * x) * (0.3 + t) + up + row

    return denoise


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 2),  # batch
    st.integers(1, 9),  # latent rows
    st.integers(1, 9),  # latent columns
    st.integers(1, 9),  # tile rows (cells)
    st.integers(1, 9),  # tile columns
    st.integers(0, 4),  # overlap (cells)
    st.integers(1, 4),  # tile batch
    st.booleans(),  # output cropped by 16 px
    st.booleans(),  # pad the last tile batch
)
def test_per_pixel_network_tiled_equals_untiled(batch, rows, cols, th, tw, ov, tb, crop, pad) -> None:
    cond = _cond(batch, rows, cols, seed=rows * 31 + cols, crop=16 if crop else 0)
    th, tw = min(th, rows), min(tw, cols)
    ov = min(ov, min(th, tw) - 1)
    grid = make_grid(TINY, cond.height, cond.width, (th * CELL, tw * CELL), TileOptions(overlap=ov * CELL))
    noise = draw_noise((batch, 3, cond.height, cond.width), 4, seed=7)
    untiled = sample(per_pixel_bind(cond), noise)
    tiled = sample(TiledDenoiser(grid, cond, per_pixel_bind, tb, pad_batches=pad), noise)
    assert tiled.shape == untiled.shape
    assert float((tiled - untiled).abs().max()) <= 2e-6


def test_one_tile_batch_is_bound_once_and_more_are_rebound_each_step() -> None:
    cond = _cond(1, 4, 6)
    binds = []

    def counting(c: Conditioning):
        binds.append(c.batch)
        return per_pixel_bind(c)

    noise = draw_noise((1, 3, cond.height, cond.width), 4, seed=0)
    grid = make_grid(TINY, cond.height, cond.width, (128, 128), TileOptions(overlap=64))
    assert grid.count == 2
    sample(TiledDenoiser(grid, cond, counting, tile_batch=2), noise)
    assert binds == [2]
    binds.clear()
    sample(TiledDenoiser(grid, cond, counting, tile_batch=1), noise)
    assert binds == [1] * 8  # 2 batches x 4 steps


def test_padding_repeats_the_last_tile_to_the_shape_batch() -> None:
    cond = _cond(1, 4, 9)
    grid = make_grid(TINY, cond.height, cond.width, (128, 128), TileOptions(overlap=0))
    assert grid.count == 3
    td = TiledDenoiser(grid, cond, per_pixel_bind, tile_batch=2, pad_batches=True)
    assert [(b.cond.batch, b.real) for b in td.batches] == [(2, 2), (2, 1)]
    td = TiledDenoiser(grid, cond, per_pixel_bind, tile_batch=2)
    assert [(b.cond.batch, b.real) for b in td.batches] == [(2, 2), (1, 1)]


def test_tile_latent_crops_are_the_cells_under_the_tile() -> None:
    cond = _cond(2, 5, 7)
    grid = make_grid(TINY, cond.height, cond.width, (96, 128), TileOptions(overlap=32))
    td = TiledDenoiser(grid, cond, per_pixel_bind, tile_batch=3)
    for batch in td.batches:
        for j, (b, tile) in enumerate(batch.units):
            top, left = tile.top // CELL, tile.left // CELL
            want = cond.latent[b, :, top : top + 3, left : left + 4]
            assert torch.equal(batch.cond.latent[j], want)
            assert torch.equal(batch.cond.caption[j], cond.caption[b])
            assert batch.cond.degrade_sigma[j] == cond.degrade_sigma[b]


# ---------------------------------------------------------------------- the real (tiny) network
@pytest.fixture(scope="module")
def tiny_torch():
    with Decoder.load(backbone="tiny", random_weights=True) as dec:
        yield dec


def test_one_by_one_grid_equals_the_untiled_decode_exactly(tiny_torch) -> None:
    cond = _cond(1, 4, 6, seed=3)
    noise = draw_noise((1, 3, cond.height, cond.width), 4, seed=5)
    grid = make_grid(TINY, cond.height, cond.width, None, TileOptions.create(tiles="1x1"))
    with tiny_torch.backend(cond.height, cond.width, 1) as be:
        untiled = sample(be.bind(cond), noise)
        tiled = sample(TiledDenoiser(grid, cond, be.bind, tile_batch=1), noise)
    assert torch.equal(tiled, untiled)


def test_batched_tiles_equal_tiles_one_at_a_time(tiny_torch) -> None:
    """Batch size changes the GEMM kernels on CPU (NOTES: ~1e-5 between batched and lone decodes)."""
    cond = _cond(2, 4, 6, seed=4)
    noise = draw_noise((2, 3, cond.height, cond.width), 4, seed=6)
    grid = make_grid(TINY, cond.height, cond.width, (96, 128), TileOptions(overlap=32))
    assert grid.count == 4
    with tiny_torch.backend(cond.height, cond.width, 1) as be:
        one = sample(TiledDenoiser(grid, cond, be.bind, tile_batch=1), noise)
        four = sample(TiledDenoiser(grid, cond, be.bind, tile_batch=4), noise)
        eight = sample(TiledDenoiser(grid, cond, be.bind, tile_batch=8), noise)
    assert float((four - one).abs().max()) <= 1e-4
    assert float((eight - one).abs().max()) <= 1e-4


@pytest.mark.slow
def test_torch_and_onnxruntime_agree_tiled_as_untiled(tiny_torch, tmp_path: Path) -> None:
    """Two 128^2 tiles in one batch (one ONNX export) vs the 192x128 one-shot export; both
    within the fp32 ORT image bound of the golden tests (1e-3)."""
    cond = _cond(1, 4, 6, seed=8)
    noise = draw_noise((1, 3, cond.height, cond.width), 4, seed=9)
    grid = make_grid(TINY, cond.height, cond.width, (128, 128), TileOptions(overlap=64))
    assert grid.count == 2
    out = {}
    with Decoder.load(
        backbone="tiny", random_weights=True, backend="onnxruntime", export_dir=tmp_path
    ) as ort:
        for name, dec in (("torch", tiny_torch), ("ort", ort)):
            with dec.backend(cond.height, cond.width, 1) as be:
                out[name, "untiled"] = sample(be.bind(cond), noise)
            with dec.backend(128, 128, 2) as be:
                out[name, "tiled"] = sample(TiledDenoiser(grid, cond, be.bind, tile_batch=2), noise)
    untiled = float((out["torch", "untiled"] - out["ort", "untiled"]).abs().max())
    tiled = float((out["torch", "tiled"] - out["ort", "tiled"]).abs().max())
    assert untiled <= 1e-3 and tiled <= 1e-3, (untiled, tiled)
    assert float((out["torch", "tiled"] - out["torch", "untiled"]).abs().max()) > 1e-2  # tiles are real


def test_several_binders_equal_one_and_a_failing_one_fails_the_step() -> None:
    """Three binders (round-robin over 3x2 tiles in batches of 1) give the one-binder velocity
    bit for bit; a binder that raises fails the call with its own error."""
    cond = _cond(2, 4, 6, seed=5)
    grid = make_grid(TINY, cond.height, cond.width, None, TileOptions.create("3x2", tile_overlap=32))
    x = torch.randn(2, 3, cond.height, cond.width, generator=torch.Generator().manual_seed(1))
    one = TiledDenoiser(grid, cond, per_pixel_bind)(x, 0.5)
    three = TiledDenoiser(grid, cond, [per_pixel_bind] * 3)
    assert torch.equal(three(x, 0.5), one) and three.calls_per_step == 12

    def broken(c: Conditioning):
        raise RuntimeError("device 2 is gone")

    with pytest.raises(RuntimeError, match="device 2 is gone"):
        TiledDenoiser(grid, cond, [per_pixel_bind, broken])(x, 0.5)
