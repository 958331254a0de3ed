"""Trace one module to one ONNX graph: the wrappers the exporter traces and the export call.

Shared by :mod:`pid_trt.compile.export` (fp32 / fp16 / bf16 graphs) and
:mod:`pid_trt.compile.export_fp8` (the quantized step graph), which both import it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class PrepareGraph(nn.Module):
    """``model.prepare`` at a fixed output size, as a module to trace: (caption [B, T, D_txt],
    latent [B, C, h, w]) -> (y_emb, lq_feats[, pit_feat])."""

    def __init__(self, model: nn.Module, height: int, width: int) -> None:
        super().__init__()
        self.model, self.height, self.width = model, height, width

    def forward(self, caption: torch.Tensor, latent: torch.Tensor):
        p = self.model.prepare(caption, latent, self.height, self.width)
        return (p.y_emb, p.lq_feats) if p.pit_feat is None else (p.y_emb, p.lq_feats, p.pit_feat)


class StepGraph(nn.Module):
    """``model.step`` as a module to trace: (x, t x1000, y_emb, lq_feats, degrade_sigma[, pit_feat])
    -> velocity [B, 3, H, W]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, t, y_emb, lq_feats, degrade_sigma, pit_feat=None):
        return self.model.step(x, t, y_emb, lq_feats, degrade_sigma, pit_feat)


def export_module(
    module: nn.Module,
    args: tuple,
    names: tuple[list[str], list[str]],
    path: Path,
    opset: int,
    translations: dict | None = None,
    dynamic_shapes: dict | None = None,
    keep_parameters: bool = False,
) -> None:
    """Trace ``module`` on ``args`` with the dynamo exporter at ``opset``, optimise the graph
    (:func:`pid_trt.compile.onnx_graph.optimise`) and write it to ``path`` with external data.
    ``names``: (input names, output names); ``translations``: custom op translations;
    ``dynamic_shapes``: torch.export's per-input dims (:mod:`pid_trt.compile.dynamic`);
    ``keep_parameters``: keep every parameter as its own initializer, named by its module path
    (refittable graphs: a checkpoint's tensors map onto them by name)."""
    import logging
    import warnings

    from pid_trt.compile.onnx_graph import optimise

    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module.eval(), args, dynamo=True, opset_version=opset, optimize=False, verbose=False,
            input_names=names[0], output_names=names[1], external_data=True,
            custom_translation_table=translations, dynamic_shapes=dynamic_shapes,
        )  # fmt: skip
    keep = None
    if keep_parameters:
        keep = {name for name, _ in module.named_parameters()}  # "model.<checkpoint key>"
    optimise(program.model, keep=keep)
    program.save(str(path), external_data=True)
