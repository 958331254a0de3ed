"""Dynamic-shape graphs: one prepare + step pair for a range of output sizes and batches.

A :class:`ShapeRange` is a box of output sizes (height and width in pixels, each
min / opt / max) and batches (min / opt / max). ``torch.onnx.export(dynamo=True,
dynamic_shapes=...)`` traces the model once with symbolic batch and patch-grid sizes; the
model computes its position tables from those symbols (:mod:`pid_trt.model.positions`,
:func:`pid_trt.model.latent_adapter.nearest_resize`), so nothing is specialised to the example.

Graph signatures (B, Hs = H/p, Ws = W/p, L = Hs*Ws dynamic; the rest static)::

    prepare: caption [B, T, D_txt], latent [B, C, h, w], grid [Hs, Ws]
             -> y_emb [B, T, D], lq_feats [B, K, L, D] (, pit_feat [B, L, D])
    step:    x [B, 3, H, W], t [B], y_emb, lq_feats, degrade_sigma [B] (, pit_feat)
             -> velocity [B, 3, H, W]

``grid`` is the only input a static prepare graph lacks: only its *shape* is read (it tells
the graph the output size, which the latent alone does not fix: a 68-row flux latent serves
2160 and 2176 rows alike); its values are ignored (zeros). (h, w) is any latent that
:func:`pid_trt.buckets.output_size` accepts for (H, W).

:class:`~pid_trt.buckets.ShapeRange` (with its defaults) lives in :mod:`pid_trt.buckets`;
:func:`profile_shapes` gives the TensorRT optimisation profile (min / opt / max shape of every
input) of a range; the engine manifest records it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pid_trt.buckets import ShapeRange
from pid_trt.config import NetConfig
from pid_trt.errors import ConfigError

#: Name of the prepare graph's size-carrying input (shape [Hs, Ws], values unused).
GRID_INPUT = "grid"

__all__ = ["GRID_INPUT", "DynamicPrepareGraph", "ShapeRange", "dynamic_shapes", "io_shapes", "profile_shapes",
           "trace_inputs"]  # fmt: skip


# ---------------------------------------------------------------------- tracing
class DynamicPrepareGraph(nn.Module):
    """``model.prepare`` with the output size read from the shape of ``grid`` [Hs, Ws]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, caption: torch.Tensor, latent: torch.Tensor, grid: torch.Tensor):
        p = self.model.config.patch_size
        p_out = self.model.prepare(caption, latent, grid.shape[0] * p, grid.shape[1] * p)
        return (p_out.y_emb, p_out.lq_feats) if p_out.pit_feat is None else (
            p_out.y_emb, p_out.lq_feats, p_out.pit_feat
        )  # fmt: skip


def latent_range(config: NetConfig, pixels: tuple[int, int, int]) -> tuple[int, int, int]:
    """Latent cells along one axis for pixel sizes (min, opt, max): ceil(pixels / px)."""
    px = config.pixels_per_latent
    return tuple(math.ceil(v / px) for v in pixels)  # type: ignore[return-value]


def _example(config: NetConfig, r: ShapeRange) -> tuple[int, int, int]:
    """(batch, Hs, Ws) to trace with: inside the range, every symbolic size >= 2 and all of
    them distinct (equal example sizes could be merged into one symbol, 1 is specialised)."""
    p = config.patch_size
    b = 2 if r.batch[2] >= 2 else 1
    hs_all = range(r.height[0] // p, r.height[2] // p + 1)
    ws_all = range(r.width[0] // p, r.width[2] // p + 1)
    for hs in hs_all:
        for ws in ws_all:
            lh, lw = latent_range(config, (hs * p,) * 3)[0], latent_range(config, (ws * p,) * 3)[0]
            sizes = [hs, ws, hs * ws] + [
                v for v, lo, hi in ((lh, *_lat(config, r.height)), (lw, *_lat(config, r.width))) if lo != hi
            ]
            if r.batch[0] != r.batch[2]:
                sizes.append(b)
            if min(sizes) >= 2 and len(set(sizes)) == len(sizes):
                return b, hs, ws
    raise ConfigError(f"range {r.name}: too narrow to trace (needs two distinct sizes per axis)")


def _lat(config: NetConfig, pixels: tuple[int, int, int]) -> tuple[int, int]:
    lo, _, hi = latent_range(config, pixels)
    return lo, hi


def trace_inputs(config: NetConfig, r: ShapeRange) -> dict[str, dict[str, torch.Tensor]]:
    """Example inputs of both graphs (zeros: tracing only reads shapes)."""
    b, hs, ws = _example(config, r)
    p, d, k, t = config.patch_size, config.hidden_size, config.num_lq_outputs, config.txt_max_length
    px = config.pixels_per_latent
    lh, lw = math.ceil(hs * p / px), math.ceil(ws * p / px)
    prepare = {
        "caption": torch.zeros(b, t, config.txt_embed_dim),
        "latent": torch.zeros(b, config.lq_latent_channels, lh, lw),
        GRID_INPUT: torch.zeros(hs, ws),
    }
    step = {
        "x": torch.zeros(b, config.in_channels, hs * p, ws * p),
        "t": torch.full((b,), 866.0),
        "y_emb": torch.zeros(b, t, d),
        "lq_feats": torch.zeros(b, k, hs * ws, d),
        "degrade_sigma": torch.zeros(b),
    }
    if config.pit_lq_inject:
        step["pit_feat"] = torch.zeros(b, hs * ws, d)
    return {"prepare": prepare, "step": step}


def dynamic_shapes(config: NetConfig, r: ShapeRange) -> dict[str, dict[str, dict[int, Any]]]:
    """``dynamic_shapes`` for torch.export of both graphs (by input name). Sides whose min
    equals max stay static. L (tokens) is left to the exporter to relate to Hs x Ws."""
    from torch.export import Dim

    p = config.patch_size
    dims: dict[str, Any] = {}
    if r.batch[0] != r.batch[2]:
        dims["B"] = Dim("batch", min=r.batch[0], max=r.batch[2])
    for name, rng in (("h", r.height), ("w", r.width)):
        if rng[0] != rng[2]:
            dims[f"grid_{name}"] = Dim(f"grid_{name}", min=rng[0] // p, max=rng[2] // p)
            lo, hi = _lat(config, rng)
            dims[f"lat_{name}"] = Dim(f"latent_{name}", min=lo, max=hi)

    def spec(**axes: str) -> dict[int, Any]:
        return {int(a[1:]): dims[n] for a, n in axes.items() if n in dims}

    batch = spec(a0="B")
    grid_hw = spec(a0="grid_h", a1="grid_w")
    x = dict(batch)
    if "grid_h" in dims:
        x[2] = p * dims["grid_h"]
    if "grid_w" in dims:
        x[3] = p * dims["grid_w"]
    tokens = Dim.AUTO if ("grid_h" in dims or "grid_w" in dims) else None
    lq, pit = dict(batch), dict(batch)
    if tokens is not None:
        lq[2], pit[1] = tokens, tokens
    prepare = {
        "caption": dict(batch),
        "latent": {**batch, **spec(a2="lat_h", a3="lat_w")},
        GRID_INPUT: grid_hw,
    }
    step = {"x": x, "t": dict(batch), "y_emb": dict(batch), "lq_feats": lq, "degrade_sigma": dict(batch)}
    if config.pit_lq_inject:
        step["pit_feat"] = pit
    return {"prepare": prepare, "step": step}


def profile_shapes(config: NetConfig, r: ShapeRange) -> dict[str, dict[str, list[list[int]]]]:
    """TensorRT optimisation profile of both graphs: {graph: {input: [min, opt, max] shapes}}."""
    p, d, k, t = config.patch_size, config.hidden_size, config.num_lq_outputs, config.txt_max_length
    out: dict[str, dict[str, list[list[int]]]] = {"prepare": {}, "step": {}}
    lat_h, lat_w = latent_range(config, r.height), latent_range(config, r.width)
    for i in range(3):
        b, h, w = r.batch[i], r.height[i], r.width[i]
        hs, ws = h // p, w // p
        shapes = {
            "prepare": {
                "caption": [b, t, config.txt_embed_dim],
                "latent": [b, config.lq_latent_channels, lat_h[i], lat_w[i]],
                GRID_INPUT: [hs, ws],
            },
            "step": {
                "x": [b, config.in_channels, h, w],
                "t": [b],
                "y_emb": [b, t, d],
                "lq_feats": [b, k, hs * ws, d],
                "degrade_sigma": [b],
                **({"pit_feat": [b, hs * ws, d]} if config.pit_lq_inject else {}),
            },
        }
        for graph, inputs in shapes.items():
            for name, shape in inputs.items():
                out[graph].setdefault(name, []).append(shape)
    return out


def io_shapes(
    config: NetConfig, height: int, width: int, batch: int, latent_hw: tuple[int, int]
) -> dict[str, list[int]]:
    """Concrete shape of every input of both graphs for one decode (a dynamic engine's binding)."""
    p, d, k, t = config.patch_size, config.hidden_size, config.num_lq_outputs, config.txt_max_length
    hs, ws = height // p, width // p
    shapes = {
        "caption": [batch, t, config.txt_embed_dim],
        "latent": [batch, config.lq_latent_channels, *latent_hw],
        GRID_INPUT: [hs, ws],
        "x": [batch, config.in_channels, height, width],
        "t": [batch],
        "y_emb": [batch, t, d],
        "lq_feats": [batch, k, hs * ws, d],
        "degrade_sigma": [batch],
    }
    if config.pit_lq_inject:
        shapes["pit_feat"] = [batch, hs * ws, d]
    return shapes
