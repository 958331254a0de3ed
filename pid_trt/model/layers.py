"""Building blocks of the PiD reference network, with explicit precision rules.

Precision contract (docs/design.md §5): activations between layers are float32. A layer whose
parameters were cast to fp16/bf16 casts its *input* to the parameter dtype for the matmul or
convolution and returns float32 again. Norm statistics, gates and the other fp32 islands
(:class:`Fp32Linear`) compute in float32 whatever the parameter dtype. With float32
parameters every cast is a no-op, so the math is exactly the upstream float32 math.

Parameter names (``weight``, ``bias``, ``w1``/``w2``/``w3``, ``fc1``/``fc2``) follow upstream so
that the state dict loads without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

F32 = torch.float32


class Linear(nn.Linear):
    """``nn.Linear`` that computes in its parameter dtype and returns float32.

    x: [..., in_features] (any float dtype) -> [..., out_features] float32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        return F.linear(x.to(w.dtype), w, self.bias).to(F32)


class Fp32Linear(nn.Linear):
    """``nn.Linear`` that always computes in float32 (an fp32 island: timestep MLP, pixel
    embedder, final layer). x: [..., in] -> [..., out] float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(F32)
        return F.linear(x.to(F32), self.weight.to(F32), bias)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (any ``padding_mode``) computing in its parameter dtype, returning float32.

    x: [B, C_in, h, w] -> [B, C_out, h', w'] float32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        return self._conv_forward(x.to(w.dtype), w, self.bias).to(F32)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` computed in float32 (statistics and affine). x: [B, C, ...] -> float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(F32)
        b = None if self.bias is None else self.bias.to(F32)
        return F.group_norm(x.to(F32), self.num_groups, w, b, self.eps)


class RMSNorm(nn.Module):
    """RMS norm over the last dim with a learned scale (eps 1e-6).

    As upstream: the statistics are float32, the normalised value is rounded to the input
    dtype, then multiplied by the weight (here always in float32). x: [..., dim] -> float32.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(F32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.to(F32) * h.to(x.dtype)


class SwiGLU(nn.Module):
    """MMDiT feed-forward: ``w2(silu(w1 x) * w3 x)``, no biases. [..., dim] -> [..., dim] float32."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = Linear(dim, hidden, bias=False)
        self.w3 = Linear(dim, hidden, bias=False)
        self.w2 = Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class GeluMLP(nn.Module):
    """PiT pixel MLP: ``fc2(gelu(fc1 x))`` (exact GELU), with biases. [..., dim] -> float32."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN: ``x * (1 + scale) + shift`` (broadcasting)."""
    return x * (1 + scale) + shift


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Unmasked SDPA with the default 1/sqrt(head) scale, run in ``dtype``.

    q, k, v: [B, heads, S, head] -> [B, heads, S, head] float32.
    """
    out = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), dropout_p=0.0)
    return out.to(F32)
