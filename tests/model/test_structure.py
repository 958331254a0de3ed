"""State-dict layout of PidNet: exact upstream names and shapes, no extra state."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pid_trt.config import TINY, GateType, PaddingMode, all_presets
from pid_trt.errors import ConfigError
from pid_trt.model import PidNet
from pid_trt.verify.inventory import inventory_shapes

RELEASED = [p for p in all_presets() if p.released]


def _meta_model(config):
    with torch.device("meta"):
        return PidNet(config)


@pytest.mark.parametrize("preset", RELEASED, ids=[p.name for p in RELEASED])
def test_state_dict_matches_inventory(preset):
    expected = {k: list(v) for k, v in inventory_shapes(preset.experiment).items()}
    got = {k: list(v.shape) for k, v in _meta_model(preset.config).state_dict().items()}
    assert sorted(set(got) - set(expected)) == [], "keys we have that the checkpoint lacks"
    assert sorted(set(expected) - set(got)) == [], "checkpoint keys we lack"
    bad = {k: (got[k], expected[k]) for k in got if got[k] != expected[k]}
    assert bad == {}
    assert len(got) == (461 if preset.config.pit_lq_inject else 456)


def test_no_buffers_and_upstream_key_examples():
    model = PidNet(dataclasses.replace(TINY, pit_lq_inject=True, lq_gate_type=GateType.PER_TOKEN))
    assert list(model.buffers()) == []
    keys = set(model.state_dict())
    for key in (
        "patch_blocks.0.attn.qkv_x.weight",
        "lq_proj.gate_modules.0.content_proj.weight",
        "lq_proj.latent_proj.3.block.0.weight",
        "lq_proj.latent_proj.6.block.5.bias",
        "lq_proj.pit_head.weight",
        "pit_lq_gate.log_alpha",
        "pixel_blocks.1.adaLN_modulation.0.weight",
        "t_embedder.mlp.2.bias",
        "y_embedder.norm.weight",
        "final_layer.linear.weight",
    ):
        assert key in keys, key
    assert model.state_dict()["lq_proj.gate_modules.0.content_proj.weight"].shape == (1, 2 * TINY.hidden_size)
    assert not any("aux" in k for k in keys)


def test_per_dim_gate_shape():
    model = PidNet(TINY)
    w = model.state_dict()["lq_proj.gate_modules.1.content_proj.weight"]
    assert w.shape == (TINY.hidden_size, 2 * TINY.hidden_size)
    assert "pit_lq_gate.log_alpha" not in model.state_dict()


def test_latent_narrower_than_patch_is_rejected():
    # 8 pixels per latent cell < 16-pixel patches: the (unsupported) fold branch upstream.
    config = dataclasses.replace(TINY, sr_scale=1, latent_spatial_down_factor=8)
    with pytest.raises(ConfigError, match="ratio"):
        PidNet(config)


def test_bad_image_size_is_rejected():
    model = PidNet(TINY)
    y = torch.zeros(1, TINY.txt_max_length, TINY.txt_embed_dim)
    with pytest.raises(ConfigError, match="multiples of patch_size"):
        model.prepare(y, torch.zeros(1, 16, 1, 1), 40, 32)


def test_missing_pit_feature_is_rejected():
    config = dataclasses.replace(TINY, pit_lq_inject=True, lq_conv_padding_mode=PaddingMode.REPLICATE)
    model = PidNet(config)
    prep = model.prepare(torch.zeros(1, 8, 32), torch.zeros(1, 16, 1, 1), 32, 32)
    with pytest.raises(ConfigError, match="pit_feat"):
        model.step(torch.zeros(1, 3, 32, 32), torch.zeros(1), prep.y_emb, prep.lq_feats, torch.zeros(1))
