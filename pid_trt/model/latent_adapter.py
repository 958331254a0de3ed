"""The latent adapter (upstream ``lq_proj``) and the sigma-aware injection gates.

Latent path, per decode (hoistable, it depends only on the latent and the output size):
  latent [B, C, h, w] -> optional unpatchify by f -> [B, C/f^2, h*f, w*f]
  -> nearest upsample to the patch grid [Hs, Ws] -> conv3x3, SiLU, conv3x3, n x ResBlock
  -> tokens [B, L, lq_hidden] -> K output heads (+ the PiT head in v1.5) -> [B, L, hidden] each.

Gates, per step (they read the image stream): ``s + sigmoid(proj([s, lq]) - e^log_alpha * sigma) * lq``
with a [B, L, hidden] (per-dim) or [B, L, 1] (per-token) gate, sigmoid in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pid_trt.config import GateType, NetConfig
from pid_trt.errors import ConfigError
from pid_trt.model.layers import Conv2d, GroupNorm, Linear
from pid_trt.model.positions import is_symbolic, size_tensor

F32 = torch.float32
#: GroupNorm groups of the adapter's ResBlocks.
RESBLOCK_GROUPS = 4


class SigmaGate(nn.Module):
    """Sigma-aware gate. ``content_proj``: Linear(2*dim -> dim) per-dim, or (2*dim -> 1) per-token;
    ``log_alpha``: scalar. forward(s [B, L, dim], lq [B, L, dim], sigma [B]) -> [B, L, dim] float32."""

    def __init__(self, dim: int, gate_type: GateType) -> None:
        super().__init__()
        out = dim if gate_type is GateType.PER_TOKEN_PER_DIM else 1
        self.content_proj = Linear(2 * dim, out)
        self.log_alpha = nn.Parameter(torch.zeros(()))

    def forward(self, s: torch.Tensor, lq: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        logit = self.content_proj(torch.cat([s, lq.to(s.dtype)], dim=-1))
        offset = -self.log_alpha.to(F32).exp() * sigma.to(F32).reshape(-1, 1, 1)
        return s + torch.sigmoid(logit + offset) * lq.to(F32)


class ResBlock(nn.Module):
    """x + [GroupNorm, SiLU, Conv3x3, GroupNorm, SiLU, Conv3x3](x); keys ``block.{0,2,3,5}``.
    x: [B, C, h, w] -> float32."""

    def __init__(self, channels: int, padding_mode: str) -> None:
        super().__init__()
        self.block = nn.Sequential(
            GroupNorm(RESBLOCK_GROUPS, channels),
            nn.SiLU(),
            Conv2d(channels, channels, 3, padding=1, padding_mode=padding_mode),
            GroupNorm(RESBLOCK_GROUPS, channels),
            nn.SiLU(),
            Conv2d(channels, channels, 3, padding=1, padding_mode=padding_mode),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(F32) + self.block(x)


def unpatchify_latent(z: torch.Tensor, factor: int) -> torch.Tensor:
    """Move a (c, pi, pj) channel packing into space: [B, C, h, w] -> [B, C/f^2, h*f, w*f]."""
    if factor == 1:
        return z
    b, c, h, w = z.shape
    z = z.reshape(b, c // (factor * factor), factor, factor, h, w)
    return z.permute(0, 1, 4, 2, 5, 3).reshape(b, c // (factor * factor), h * factor, w * factor)


def _nearest_index(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """Source indices of PyTorch 'nearest' resize along one axis: min(floor(i * in/out), in-1)."""
    scale = torch.tensor(n_in / n_out, dtype=F32)
    idx = torch.floor(torch.arange(n_out, dtype=F32) * scale).to(torch.int64).clamp(max=n_in - 1)
    return idx.to(device)


def _nearest_index_graph(
    n_in: int | torch.SymInt, n_out: int | torch.SymInt, device: torch.device
) -> torch.Tensor:
    """:func:`_nearest_index` with sizes known only at run time: min(floor(i * (in/out)), in-1)
    with the float32 scale PyTorch's CPU kernel uses (in / out in float32)."""
    scale = size_tensor(n_in, device) / size_tensor(n_out, device)
    idx = torch.floor(torch.arange(n_out, device=device).to(F32) * scale).to(torch.int64)
    return torch.minimum(idx, torch.arange(n_in, device=device)[-1])


def nearest_resize(z: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest resize (upstream ``F.interpolate(mode='nearest')`` semantics) of [B, C, h, w] to
    [B, C, height, width]. Exact integer upsampling is a reshape + expand (pixel repetition);
    other sizes gather host-computed indices; equal sizes are the identity. With symbolic sizes
    (dynamic-shape export) it always gathers, with indices computed in the graph (one graph
    then serves exact multiples and in-between sizes alike; for exact multiples the gather
    repeats pixels exactly as the expand does)."""
    b, c, h, w = z.shape
    if is_symbolic(h, w, height, width):
        z = torch.index_select(z, 2, _nearest_index_graph(h, height, z.device))
        return torch.index_select(z, 3, _nearest_index_graph(w, width, z.device))
    if (h, w) == (height, width):
        return z
    if height % h == 0 and width % w == 0:
        rh, rw = height // h, width // w
        z = z[:, :, :, None, :, None].expand(b, c, h, rh, w, rw)
        return z.reshape(b, c, height, width)
    z = torch.index_select(z, 2, _nearest_index(h, height, z.device))
    return torch.index_select(z, 3, _nearest_index(w, width, z.device))


class LatentAdapter(nn.Module):
    """Upstream ``LQProjection2D`` (latent-only). Submodules: ``latent_proj`` (Sequential),
    ``output_heads`` (K Linears), ``pit_head`` (v1.5), ``gate_modules`` (K :class:`SigmaGate`)."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        f = config.lq_latent_unpatchify_factor
        cells = config.sr_scale * (config.latent_spatial_down_factor // f)
        if cells < config.patch_size:
            raise ConfigError(
                f"latent-to-patch ratio {cells}/{config.patch_size} < 1 (sr_scale={config.sr_scale}, "
                f"latent_spatial_down_factor={config.latent_spatial_down_factor}, unpatchify={f}): "
                "expected a latent cell at least one patch wide"
            )
        self.unpatchify_factor = f
        self.upsample_ratio = cells // config.patch_size
        self.latent_channels = config.lq_latent_channels
        hid, pad = config.lq_hidden_dim, config.lq_conv_padding_mode.value
        layers: list[nn.Module] = [
            Conv2d(config.lq_conv_in_channels, hid, 3, padding=1, padding_mode=pad),
            nn.SiLU(),
            Conv2d(hid, hid, 3, padding=1, padding_mode=pad),
        ]
        layers += [ResBlock(hid, pad) for _ in range(config.lq_num_res_blocks)]
        self.latent_proj = nn.Sequential(*layers)
        k = config.num_lq_outputs
        self.output_heads = nn.ModuleList([Linear(hid, config.hidden_size) for _ in range(k)])
        self.pit_head = Linear(hid, config.hidden_size) if config.pit_lq_inject else None
        self.gate_modules = nn.ModuleList(
            [SigmaGate(config.hidden_size, config.lq_gate_type) for _ in range(k)]
        )

    def align(self, latent: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """Unpatchify and align the latent to the patch grid: [B, C, h, w] -> [B, C', grid_h, grid_w]."""
        z = unpatchify_latent(latent, self.unpatchify_factor)
        if self.upsample_ratio == 1 and is_symbolic(*z.shape[2:], grid_h, grid_w):
            # Dynamic-shape export: the sizes are not known to match; bilinear at scale 1 is exact.
            return F.interpolate(z.to(F32), size=(grid_h, grid_w), mode="bilinear", align_corners=False)
        if self.upsample_ratio == 1 and tuple(z.shape[2:]) != (grid_h, grid_w):
            # Upstream resizes bilinearly when a 1:1 latent does not match the grid.
            return F.interpolate(z.to(F32), size=(grid_h, grid_w), mode="bilinear", align_corners=False)
        return nearest_resize(z, grid_h, grid_w)

    def features(
        self, latent: torch.Tensor, grid_h: int, grid_w: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latent [B, C, h, w] -> (stacked trunk features [B, K, L, hidden], PiT feature [B, L, hidden]
        or None), float32, L = grid_h * grid_w row-major."""
        if latent.dim() != 4 or latent.shape[1] != self.latent_channels:
            raise ConfigError(
                f"latent shape {tuple(latent.shape)}: expected [B, {self.latent_channels}, h, w]"
            )
        feat = self.latent_proj(self.align(latent, grid_h, grid_w))  # [B, hid, Hs, Ws]
        tokens = feat.flatten(2).transpose(1, 2)  # [B, L, hid]
        stacked = torch.stack([head(tokens) for head in self.output_heads], dim=1)
        pit = self.pit_head(tokens) if self.pit_head is not None else None
        return stacked, pit
