"""Seeded, deterministic random initialisation for smoke runs without released weights."""

from __future__ import annotations

import math

import torch
from torch import nn

from pid_trt.model.latent_adapter import SigmaGate
from pid_trt.model.layers import RMSNorm

#: Std of the normal init of biases and of the text position table.
BIAS_STD = 0.02
#: Initial bias of the gates' content projection (gates start mostly open: sigmoid(2) ~ 0.88).
GATE_BIAS = 2.0
#: Initial log_alpha of the gates (alpha = 5, as upstream).
GATE_LOG_ALPHA = math.log(5.0)


def random_init(model: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter of ``model`` deterministically from ``seed`` (CPU generator, so
    the values are the same on every device and dtype); returns the model.

    Norm weights (RMSNorm, GroupNorm) = 1; gate ``log_alpha`` = ln 5 and content bias = 2;
    weight matrices and conv kernels ~ N(0, 1/fan_in) (variance preserving; ~0.025 at the
    released width 1536, so every path of a small config still moves the output); biases and
    the text position table ~ N(0, 0.02^2). Every parameter is nonzero. Parameters on the
    meta device are left alone.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    special: dict[str, float] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, (RMSNorm, nn.GroupNorm)) and module.weight is not None:
            special[prefix + "weight"] = 1.0
        if isinstance(module, SigmaGate):
            special[prefix + "log_alpha"] = GATE_LOG_ALPHA
            special[prefix + "content_proj.bias"] = GATE_BIAS
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if param.device.type == "meta":
                continue
            if name in special:
                value = torch.full(param.shape, special[name], dtype=torch.float32)
            else:
                fan_in = math.prod(param.shape[1:]) if param.dim() >= 2 and "pos_embedding" not in name else 0
                std = fan_in**-0.5 if fan_in else BIAS_STD
                value = torch.randn(param.shape, generator=gen, dtype=torch.float32) * std
            param.copy_(value)
    return model
