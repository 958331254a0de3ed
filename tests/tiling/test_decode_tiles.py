"""``Decoder.decode(tiles=..., tile_size=..., tile_overlap=..., tile_batch=...,
allow_untrained_size=...)`` and ``Decoder.plan``: the keywords reach the sampler, ``1x1``
equals one shot exactly, ``off`` outside the envelope is refused before the memory check and
before any weight is read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pid_trt import Decoder
from pid_trt.errors import ConfigError


@pytest.fixture(scope="module")
def tiny():
    with Decoder.load(backbone="tiny", random_weights=True, envelope="128x128") as dec:
        yield dec


def _latent(seed: int, h: int = 4, w: int = 6, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 16, h, w, generator=torch.Generator().manual_seed(seed))


def test_one_by_one_tiles_equal_the_one_shot_decode_exactly(tiny) -> None:
    lat = _latent(1)
    one = tiny.decode(lat, seed=3, tiles="off", allow_untrained_size=True)
    assert torch.equal(tiny.decode(lat, seed=3, tiles="1x1"), one)


def test_auto_tiles_outside_the_given_envelope(tiny) -> None:
    lat = _latent(2, batch=2)
    p = tiny.plan(128, 192, batch=2)
    assert p.tiled and (p.grid.cols, p.grid.rows, p.grid.tile_width) == (2, 1, 128)
    auto = tiny.decode(lat, seed=4)
    explicit = tiny.decode(lat, seed=4, tiles="2x1", tile_size="128x128", tile_batch=4)
    assert auto.shape == (2, 3, 128, 192)
    assert float((auto - explicit).abs().max()) <= 1e-4  # same tiles, batch 1 vs 4 GEMMs
    one = tiny.decode(lat, seed=4, allow_untrained_size=True)
    assert float((auto - one).abs().max()) > 1e-2  # it did tile
    assert not tiny.plan(128, 128).tiled


def test_bad_tile_keywords_are_one_line_errors(tiny) -> None:
    lat = _latent(3)
    for kwargs, match in (
        (dict(tiles="2y2"), r"--tiles '2y2': expected auto, off or COLSxROWS"),
        (dict(tile_size="100x128"), r"--tile-size width 100 px is not on the latent grid"),
        (dict(tile_size="128x128", tile_overlap=128), r"--tile-overlap 128 px with 128x128 tiles"),
        (dict(tiles="4x1", tile_size="32x128"), r"leaves a gap"),
        (dict(tile_batch=0), r"--tile-batch 0: expected an integer >= 1"),
    ):
        with pytest.raises(ConfigError, match=match) as err:
            tiny.decode(lat, **kwargs)
        assert "\n" not in str(err.value)


def test_tiles_off_outside_the_envelope_is_refused_before_memory_and_weights(tmp_path: Path) -> None:
    """flux-2k at 4096x4096: the one-shot estimate (~28 GiB) is more than this machine has, and
    the checkpoint is not a checkpoint at all: the refusal must come first."""
    junk = tmp_path / "model_ema_bf16.pth"
    junk.write_bytes(b"not a checkpoint")
    with Decoder.load(backbone="flux", ckpt_type="2k", checkpoint=junk) as dec:
        lat = torch.zeros(1, 16, 128, 128)
        cap = torch.zeros(1, 300, 2304)
        with pytest.raises(ConfigError) as err:
            dec.decode(lat, cap, tiles="off")
        msg = str(err.value)
        assert msg.startswith("4096x4096 is outside the trained sizes of flux-2k (2048x2048, 2304x1728")
        assert "--tiles auto" in msg and "--allow-untrained-size" in msg
        assert dec.cached_sizes() == []
