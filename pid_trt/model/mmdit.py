"""Dual-stream MMDiT block with joint text+image attention (the PiD patch trunk).

Image stream x: [B, L, D] patch tokens; text stream y: [B, T, D]; condition c: [B, 1, D]
(= SiLU(t_emb)). Joint sequence = text first, then image; one unmasked SDPA.
"""

from __future__ import annotations

import torch
from torch import nn

from pid_trt.model.layers import F32, Linear, RMSNorm, SwiGLU, attention, modulate
from pid_trt.model.positions import apply_rope

Tables = tuple[torch.Tensor, torch.Tensor]


class JointAttention(nn.Module):
    """Separate qkv/proj per stream, per-head q/k RMSNorm per stream, 2-D RoPE on the image
    stream and (optional) 1-D RoPE on the text stream."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv_x = Linear(dim, 3 * dim, bias=False)
        self.qkv_y = Linear(dim, 3 * dim, bias=False)
        self.q_norm_x = RMSNorm(self.head_dim)
        self.k_norm_x = RMSNorm(self.head_dim)
        self.q_norm_y = RMSNorm(self.head_dim)
        self.k_norm_y = RMSNorm(self.head_dim)
        self.proj_x = Linear(dim, dim)
        self.proj_y = Linear(dim, dim)

    def _qkv(self, proj: Linear, q_norm: RMSNorm, k_norm: RMSNorm, z: torch.Tensor, rope: Tables | None):
        b, n, _ = z.shape
        q, k, v = proj(z).reshape(b, n, 3, self.heads, self.head_dim).unbind(2)  # [B, N, h, hd] each
        q, k = q_norm(q), k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, h, N, hd]

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        rope_img: Tables,
        rope_txt: Tables | None,
        text_out: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [B, L, D], y: [B, T, D] -> (image out [B, L, D], text out [B, T, D] or None) float32."""
        b, n_img, d = x.shape
        n_txt = y.shape[1]
        qx, kx, vx = self._qkv(self.qkv_x, self.q_norm_x, self.k_norm_x, x, rope_img)
        qy, ky, vy = self._qkv(self.qkv_y, self.q_norm_y, self.k_norm_y, y, rope_txt)
        out = attention(
            torch.cat([qy, qx], dim=2),
            torch.cat([ky, kx], dim=2),
            torch.cat([vy, vx], dim=2),
            self.qkv_x.weight.dtype,
        )
        out_x = self.proj_x(out[:, :, n_txt:].transpose(1, 2).reshape(b, n_img, d))
        if not text_out:
            return out_x, None
        out_y = self.proj_y(out[:, :, :n_txt].transpose(1, 2).reshape(b, n_txt, d))
        return out_x, out_y


class MMDiTBlock(nn.Module):
    """One dual-stream block with AdaLN modulation (6 chunks per stream: shift/scale/gate for
    attention, then for the MLP)."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm_x1 = RMSNorm(dim)
        self.norm_y1 = RMSNorm(dim)
        self.attn = JointAttention(dim, heads)
        self.norm_x2 = RMSNorm(dim)
        self.norm_y2 = RMSNorm(dim)
        self.mlp_x = SwiGLU(dim, mlp_hidden)
        self.mlp_y = SwiGLU(dim, mlp_hidden)
        self.adaLN_modulation_img = nn.Sequential(Linear(dim, 6 * dim))
        self.adaLN_modulation_txt = nn.Sequential(Linear(dim, 6 * dim))

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        cond: torch.Tensor,
        rope_img: Tables,
        rope_txt: Tables | None,
        text_out: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, L, D], y: [B, T, D], cond: [B, 1, D] -> (x, y) float32.

        ``text_out=False`` (the last block) skips the text stream's output branch, whose result
        nothing consumes; y is then returned unchanged.
        """
        sx1, cx1, gx1, sx2, cx2, gx2 = self.adaLN_modulation_img(cond).chunk(6, dim=-1)
        sy1, cy1, gy1, sy2, cy2, gy2 = self.adaLN_modulation_txt(cond).chunk(6, dim=-1)
        x = x.to(F32)
        y = y.to(F32)
        ax, ay = self.attn(
            modulate(self.norm_x1(x), sx1, cx1),
            modulate(self.norm_y1(y), sy1, cy1),
            rope_img,
            rope_txt,
            text_out,
        )
        x = x + gx1 * ax
        x = x + gx2 * self.mlp_x(modulate(self.norm_x2(x), sx2, cx2))
        if ay is not None:
            y = y + gy1 * ay
            y = y + gy2 * self.mlp_y(modulate(self.norm_y2(y), sy2, cy2))
        return x, y
