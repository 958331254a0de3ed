"""The pixel pathway: pixel embedder and PiT blocks (per-pixel AdaLN + per-patch compaction).

Pixel stream: [B*L, P2, d] float32 (P2 = patch_size^2 pixels per patch, row-major inside the
patch; patches row-major), d = pixel_hidden_size. Patch condition: [B*L, D].
"""

from __future__ import annotations

import torch
from torch import nn

from pid_trt.model.layers import F32, Fp32Linear, GeluMLP, Linear, RMSNorm, attention, modulate
from pid_trt.model.positions import add_pixel_pos, apply_rope, pixel_pos_tables

Tables = tuple[torch.Tensor, torch.Tensor]
#: PiT MLP width multiplier (16 -> 64 -> 16 for the releases).
PIT_MLP_RATIO = 4


def patchify_pixels(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, H, W, d] -> [B*L, patch*patch, d] (patches row-major, pixels row-major in a patch)."""
    b, h, w, d = x.shape
    x = x.reshape(b, h // patch, patch, w // patch, patch, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * (h // patch) * (w // patch), patch * patch, d)


def unpatchify_pixels(x: torch.Tensor, batch: int, height: int, width: int, patch: int) -> torch.Tensor:
    """[B*L, patch*patch, C] -> [B, C, H, W]: the inverse of :func:`patchify_pixels` as
    reshape + permute (exactly a stride=kernel ``F.fold``)."""
    c = x.shape[-1]
    hs, ws = height // patch, width // patch
    x = x.reshape(batch, hs, ws, patch, patch, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(batch, c, height, width)


class PixelEmbedder(nn.Module):
    """Per-pixel Linear(in -> d) plus the full-image 2-D sin/cos table (fp32 island).
    forward(x [B, C, H, W]) -> [B*L, P2, d] float32."""

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = Fp32Linear(in_channels, dim)
        self.dim = dim
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        col, row = pixel_pos_tables(self.dim, h, w, device=x.device)
        feats = add_pixel_pos(self.proj(x.permute(0, 2, 3, 1)), col, row)
        return patchify_pixels(feats, self.patch)


class RotaryAttention(nn.Module):
    """Self-attention over the L compacted patch tokens with q/k RMSNorm and 2-D RoPE.
    forward(x [B, L, A], rope) -> [B, L, A] float32."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = Linear(dim, 3 * dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: Tables) -> torch.Tensor:
        b, n, a = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).unbind(2)
        q, k = apply_rope(self.q_norm(q), *rope), apply_rope(self.k_norm(k), *rope)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.qkv.weight.dtype)
        return self.proj(out.transpose(1, 2).reshape(b, n, a))


class PiTBlock(nn.Module):
    """Pixel transformer block: each pixel gets its own 6 x d modulation from its patch token;
    attention runs on the patch's pixels compacted to one A-wide token."""

    def __init__(self, pixel_dim: int, patch_dim: int, patch: int, attn_dim: int, attn_heads: int) -> None:
        super().__init__()
        p2 = patch * patch
        self.pixel_dim = pixel_dim
        self.attn_dim = attn_dim
        self.compress_to_attn = Linear(p2 * pixel_dim, attn_dim)
        self.expand_from_attn = Linear(attn_dim, p2 * pixel_dim)
        self.norm1 = RMSNorm(pixel_dim)
        self.attn = RotaryAttention(attn_dim, attn_heads)
        self.norm2 = RMSNorm(pixel_dim)
        self.mlp = GeluMLP(pixel_dim, PIT_MLP_RATIO * pixel_dim)
        self.adaLN_modulation = nn.Sequential(Linear(patch_dim, 6 * pixel_dim * p2))

    def forward(self, x: torch.Tensor, s_cond: torch.Tensor, batch: int, rope: Tables) -> torch.Tensor:
        """x: [B*L, P2, d]; s_cond: [B*L, D]; rope: tables for the [Hs, Ws] grid -> [B*L, P2, d]."""
        bl, p2, d = x.shape
        mod = self.adaLN_modulation(s_cond).reshape(bl, p2, 6 * d)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        x = x.to(F32)
        u = modulate(self.norm1(x), shift1, scale1).reshape(bl, p2 * d)
        tokens = self.compress_to_attn(u).reshape(batch, bl // batch, self.attn_dim)
        attn = self.expand_from_attn(self.attn(tokens, rope).reshape(bl, self.attn_dim))
        x = x + gate1 * attn.reshape(bl, p2, d)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))
