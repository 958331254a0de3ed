"""``PidNet``: the PiD network (inference path; upstream names it the same), split into a per-decode
:meth:`PidNet.prepare` and a per-step :meth:`PidNet.step`.

Shapes: B batch; H x W output pixels (multiples of patch_size p); Hs = H/p, Ws = W/p,
L = Hs*Ws patch tokens (row-major); T <= txt_max_length text tokens; D = hidden_size;
K = config.num_lq_outputs latent injections.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pid_trt.config import NetConfig
from pid_trt.errors import ConfigError
from pid_trt.model.latent_adapter import LatentAdapter, SigmaGate
from pid_trt.model.layers import F32, Fp32Linear, Linear, RMSNorm
from pid_trt.model.mmdit import MMDiTBlock
from pid_trt.model.pit import PiTBlock, PixelEmbedder, unpatchify_pixels
from pid_trt.model.positions import TIMESTEP_FEATURES, rope_1d, rope_2d, timestep_features


class Prepared(NamedTuple):
    """Per-decode conditioning, computed once by :meth:`PidNet.prepare` (all float32).

    y_emb: [B, T, D] projected, normalised caption plus its learned positions.
    lq_feats: [B, K, L, D] latent-adapter features, one per trunk injection.
    pit_feat: [B, L, D] latent feature for the pixel pathway (v1.5), else None.
    """

    y_emb: torch.Tensor
    lq_feats: torch.Tensor
    pit_feat: torch.Tensor | None


class TokenEmbedder(nn.Module):
    """Linear projection with an optional RMSNorm (upstream ``PatchTokenEmbedder``). [..., in] -> [..., D]."""

    def __init__(self, in_dim: int, dim: int, norm: bool) -> None:
        super().__init__()
        self.proj = Linear(in_dim, dim)
        self.norm = RMSNorm(dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x) if self.norm is not None else x


class TimestepEmbedder(nn.Module):
    """Sinusoid (256, max period 10) then MLP 256 -> D -> D, all float32. t: [B] -> [B, D]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(Fp32Linear(TIMESTEP_FEATURES, dim), nn.SiLU(), Fp32Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t))


class FinalLayer(nn.Module):
    """RMSNorm then Linear(d -> out channels), float32. [..., d] -> [..., out]."""

    def __init__(self, dim: int, out_channels: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.linear = Fp32Linear(dim, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


def patchify_image(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Non-overlapping unfold as reshape + permute: [B, C, H, W] -> [B, L, C*p*p], feature
    order (c, ky, kx), tokens row-major."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


class PidNet(nn.Module):
    """The PiD velocity network. ``state_dict()`` keys are upstream's without the ``net.`` prefix.

    forward(x [B, 3, H, W], t [B] (x1000), y [B, T, D_txt], lq_latent [B, C, h, w],
    degrade_sigma [B]) -> velocity [B, 3, H, W] float32. Identical to
    ``step(x, t, *prepare(y, lq_latent, H, W)[:2], degrade_sigma, pit_feat)``.
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        if not isinstance(config, NetConfig):
            raise ConfigError(f"PidNet config {type(config).__name__}: expected a NetConfig")
        self.config = c = config
        d, p = c.hidden_size, c.patch_size
        self.pixel_embedder = PixelEmbedder(c.in_channels, c.pixel_hidden_size, p)
        self.s_embedder = TokenEmbedder(c.in_channels * p * p, d, norm=False)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = TokenEmbedder(c.txt_embed_dim, d, norm=True)
        self.y_pos_embedding = nn.Parameter(torch.zeros(1, c.txt_max_length, d))
        self.patch_blocks = nn.ModuleList(
            [MMDiTBlock(d, c.num_groups, c.mlp_hidden) for _ in range(c.patch_depth)]
        )
        self.pixel_blocks = nn.ModuleList(
            [
                PiTBlock(c.pixel_hidden_size, d, p, c.pixel_attn_hidden_size, c.pixel_num_groups)
                for _ in range(c.pixel_depth)
            ]
        )
        self.final_layer = FinalLayer(c.pixel_hidden_size, c.in_channels)
        self.lq_proj = LatentAdapter(c)
        self.pit_lq_gate = SigmaGate(d, c.lq_gate_type) if c.pit_lq_inject else None

    # ------------------------------------------------------------------ helpers
    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (Hs, Ws) of an output of height x width pixels."""
        p = self.config.patch_size
        if height <= 0 or width <= 0 or height % p or width % p:
            raise ConfigError(f"image size {width}x{height}: expected positive multiples of patch_size {p}")
        return height // p, width // p

    def rope_tables(self, height: int, width: int, device: torch.device | None = None):
        """(image RoPE of the MMDiT, image RoPE of the PiT), each (cos, sin) [L, head/2] float32."""
        c = self.config
        hs, ws = self.grid(height, width)
        ref_h, ref_w = c.rope_ref_h // c.patch_size, c.rope_ref_w // c.patch_size
        return (
            rope_2d(c.head_dim, hs, ws, ref_h, ref_w, device),
            rope_2d(c.pixel_head_dim, hs, ws, ref_h, ref_w, device),
        )

    # ------------------------------------------------------------------ per decode
    def prepare(self, y: torch.Tensor, lq_latent: torch.Tensor, height: int, width: int) -> Prepared:
        """Per-decode work: caption projection and the latent adapter.

        y: [B, T, D_txt] (truncated to txt_max_length); lq_latent: [B, C, h, w];
        height, width: output pixels. Returns :class:`Prepared` (float32).
        """
        c = self.config
        if y.dim() != 3 or y.shape[2] != c.txt_embed_dim:
            raise ConfigError(f"caption embedding shape {tuple(y.shape)}: expected [B, T, {c.txt_embed_dim}]")
        n_txt = min(y.shape[1], c.txt_max_length)
        y_emb = self.y_embedder(y[:, :n_txt]) + self.y_pos_embedding[:, :n_txt].to(F32)
        hs, ws = self.grid(height, width)
        lq_feats, pit_feat = self.lq_proj.features(lq_latent, hs, ws)
        return Prepared(y_emb, lq_feats, pit_feat)

    # ------------------------------------------------------------------ per step
    def step(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y_emb: torch.Tensor,
        lq_feats: torch.Tensor,
        degrade_sigma: torch.Tensor,
        pit_feat: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One network evaluation from prepared conditioning (plain tensors, traceable).

        x: [B, 3, H, W]; t: [B] (x1000); y_emb: [B, T, D]; lq_feats: [B, K, L, D];
        degrade_sigma: [B]; pit_feat: [B, L, D] (required iff config.pit_lq_inject)
        -> velocity [B, 3, H, W] float32.
        """
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.in_channels:
            raise ConfigError(f"image shape {tuple(x.shape)}: expected [B, {c.in_channels}, H, W]")
        b, _, height, width = x.shape
        hs, ws = self.grid(height, width)
        k = c.num_lq_outputs
        if lq_feats.dim() != 4 or tuple(lq_feats.shape[1:]) != (k, hs * ws, c.hidden_size):
            raise ConfigError(
                f"lq_feats shape {tuple(lq_feats.shape)}: expected [B, {k}, {hs * ws}, {c.hidden_size}] "
                f"for a {width}x{height} image"
            )
        if c.pit_lq_inject and pit_feat is None:
            raise ConfigError("pit_feat=None: expected [B, L, hidden] for a config with pit_lq_inject")
        rope_img, rope_pix = self.rope_tables(height, width, x.device)
        rope_txt = (
            rope_1d(c.head_dim, y_emb.shape[1], c.text_rope_theta, x.device) if c.use_text_rope else None
        )

        t_emb = self.t_embedder(t.reshape(-1))[:, None, :]  # [B, 1, D]
        cond = F.silu(t_emb)
        s = self.s_embedder(patchify_image(x, c.patch_size))
        y = y_emb
        last = len(self.patch_blocks) - 1
        for i, block in enumerate(self.patch_blocks):
            if i % c.lq_interval == 0 and i // c.lq_interval < k:
                idx = i // c.lq_interval
                s = self.lq_proj.gate_modules[idx](s, lq_feats[:, idx], degrade_sigma)
            s, y = block(s, y, cond, rope_img, rope_txt, text_out=i < last)
        s = F.silu(t_emb + s)
        if self.pit_lq_gate is not None:
            s = self.pit_lq_gate(s, pit_feat, degrade_sigma)
        s_cond = s.reshape(b * hs * ws, c.hidden_size)

        px = self.pixel_embedder(x)
        for block in self.pixel_blocks:
            px = block(px, s_cond, b, rope_pix)
        return unpatchify_pixels(self.final_layer(px), b, height, width, c.patch_size)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        lq_latent: torch.Tensor,
        degrade_sigma: torch.Tensor,
    ) -> torch.Tensor:
        """Full network call: ``step(x, t, *prepare(y, lq_latent, H, W), degrade_sigma)``."""
        prep = self.prepare(y, lq_latent, x.shape[2], x.shape[3])
        return self.step(x, t, prep.y_emb, prep.lq_feats, degrade_sigma, prep.pit_feat)
