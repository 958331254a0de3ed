"""The size policy: envelopes as data, one shot inside / tiles outside, the refusal of
``--tiles off`` outside, tiles for memory, and the plan's engine and cost figures."""

from __future__ import annotations

import pytest

from pid_trt.buckets import Bucket
from pid_trt.config import TINY, Precision, get_preset
from pid_trt.costmodel import estimate
from pid_trt.errors import ConfigError
from pid_trt.resources import estimate_decode_memory
from pid_trt.tiling import Envelope, TileOptions, envelope_for, plan
from pid_trt.tiling.render import build_command

FLUX_2K = get_preset("flux", "2k")
FLUX_4K = get_preset("flux", "2kto4k")

# ARCHITECTURE §2.4: the README's 2k sizes and the training size table's 3:2 pair.
TWO_K_SIZES = {"2048x2048", "2304x1728", "1728x2304", "2688x1536", "1536x2688", "2688x1792", "1792x2688"}


def test_envelopes_are_the_trained_sizes() -> None:
    two_k = envelope_for(FLUX_2K)
    assert {b.name for b in two_k.sizes} == TWO_K_SIZES
    four_k = envelope_for(FLUX_4K)
    names = {b.name for b in four_k.sizes}
    # ARCHITECTURE §2.4: 1:1 2048^2 .. 3584^2, 4:3 2368x1792 .. 4096x2816, 16:9 2752x1536 .. 4096x2176
    assert {
        "2048x2048",
        "3584x3584",
        "2368x1792",
        "4096x2816",
        "2752x1536",
        "4096x2176",
        "2176x4096",
    } <= names
    assert "4096x4096" not in names  # beyond the largest trained square (README example only)
    assert four_k.covers(2160, 3840) and not four_k.covers(4096, 4096) and not four_k.covers(3072, 4096)
    assert two_k.covers(1536, 2048) and not two_k.covers(2688, 2688)
    for name in ("tiny", "small"):
        assert envelope_for(get_preset(name)) is None


def test_inside_the_envelope_is_one_shot() -> None:
    p = plan(FLUX_2K.config, 1728, 2304, envelope=envelope_for(FLUX_2K))
    assert not p.tiled and p.inside
    assert [(e.height, e.width, e.batch) for e in p.engines] == [(1728, 2304, 1)]


def test_outside_the_envelope_is_tiled_with_a_trained_tile_size() -> None:
    env = envelope_for(FLUX_2K)
    p = plan(FLUX_2K.config, 4096, 4096, envelope=env)
    assert p.tiled and not p.inside
    grid = p.grid
    assert Bucket(grid.tile_height, grid.tile_width) in env.sizes
    assert all(t.shape == (grid.tile_height, grid.tile_width) for t in grid.tiles)
    ox, oy = grid.overlaps()
    assert min(ox, oy) >= 256  # default overlap: 1/8 of the shorter side of the tile, >= 1728 / 8
    assert p.tiled_cost.flops < p.one_shot.flops  # attention is quadratic in tokens
    assert p.tiled_cost.memory.total < p.one_shot.memory.total


def test_tiles_off_outside_the_envelope_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        plan(FLUX_2K.config, 4096, 4096, TileOptions.create(tiles="off"), envelope=envelope_for(FLUX_2K))
    msg = str(err.value)
    assert "\n" not in msg
    assert "4096x4096 is outside the trained sizes of flux-2k (2048x2048, 2304x1728" in msg
    assert "--tiles auto" in msg and "--allow-untrained-size" in msg


def test_allow_untrained_size_forces_one_shot() -> None:
    env = envelope_for(FLUX_2K)
    for tiles in ("off", "auto"):
        p = plan(
            FLUX_2K.config,
            4096,
            4096,
            TileOptions.create(tiles=tiles, allow_untrained_size=True),
            envelope=env,
        )
        assert not p.tiled


def test_explicit_grid_tiles_even_inside_the_envelope() -> None:
    p = plan(
        FLUX_2K.config,
        2048,
        2048,
        TileOptions.create(tiles="2x2", tile_overlap=256),
        envelope=envelope_for(FLUX_2K),
    )
    assert p.tiled and (p.grid.cols, p.grid.rows) == (2, 2)
    # ceil((64 + 8) / 2) = 36 cells of 32 px
    assert (p.grid.tile_height, p.grid.tile_width) == (1152, 1152)


def test_tiles_for_memory_without_an_envelope() -> None:
    """tiny has no envelope: one shot unless the decode does not fit memory_free."""
    need = estimate_decode_memory(TINY, 1024, 1024, 1, "fp32").total
    assert not plan(TINY, 1024, 1024, precision="fp32").tiled
    p = plan(TINY, 1024, 1024, precision="fp32", memory_free=need // 2)
    assert p.tiled and p.tiled_cost.memory.total <= need // 2
    assert p.grid.tile_height == p.grid.tile_width < 1024


def test_engines_and_build_commands_follow_the_tile_batch() -> None:
    env = envelope_for(FLUX_2K)
    p = plan(
        FLUX_2K.config,
        4096,
        4096,
        TileOptions.create(tile_size="2048x2048", tile_batch=2),
        envelope=env,
        batch=1,
    )
    (need,) = p.engines
    # 4096 = 128 cells, tile 64, overlap 8: ceil(120 / 56) = 3 per axis -> 9 tiles, batches of 2 -> 5 calls
    assert (need.height, need.width, need.batch, need.tiles, need.calls) == (2048, 2048, 2, 9, 5)
    cmd = build_command(need, "--backbone flux --ckpt-type 2k", Precision.BF16)
    assert cmd == "pidtrt build --backbone flux --ckpt-type 2k --size 2048x2048 --batch 2 --precision bf16"
    text = p.render("flux-2k", "--backbone flux --ckpt-type 2k")
    assert cmd in text and "3x3 = 9 per image" in text


def test_tiled_flops_add_up_the_tile_batches() -> None:
    """5 calls of a batch-2 2048^2 step, each re-binding (more than one batch): 4 x (step + once)."""
    env = envelope_for(FLUX_2K)
    p = plan(
        FLUX_2K.config, 4096, 4096, TileOptions.create(tile_size="2048x2048", tile_batch=2), envelope=env
    )
    e = estimate(FLUX_2K.config, 2048, 2048, 2, 4, Precision.BF16)
    assert p.tiled_cost.flops == pytest.approx(5 * 4 * e.flops_per_step, rel=1e-12)


def test_given_envelope_for_a_stand_in() -> None:
    env = Envelope.parse("256x256", name="small (set)")
    small = get_preset("small").config
    assert not plan(small, 256, 256, envelope=env).tiled
    p = plan(small, 1024, 1024, envelope=env)
    assert p.tiled and (p.grid.tile_height, p.grid.tile_width) == (256, 256)
    # 32 cells, tile 8, overlap 1: ceil(31 / 7) = 5 per axis
    assert (p.grid.cols, p.grid.rows) == (5, 5)


def test_when_no_tile_fits_the_memory_either() -> None:
    """Inside the envelope (or without one) the plan stays one shot, so the one-shot memory
    check says what would fit; outside it, tiles of the smallest trained size (refused later)."""
    assert not plan(TINY, 1024, 1024, precision="fp32", memory_free=1).tiled
    env = envelope_for(FLUX_2K)
    p = plan(FLUX_2K.config, 4096, 4096, envelope=env, memory_free=1)
    assert p.tiled and (p.grid.tile_height, p.grid.tile_width) in {
        (1728, 2304),
        (2304, 1728),
        (1536, 2688),
        (2688, 1536),
    }
