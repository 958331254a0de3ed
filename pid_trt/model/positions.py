"""Position and time encodings of PiD: RoPE tables, the pixel sin/cos table, the timestep
sinusoid. All float32 and free of float64 ops, so a traced graph carries no float64.

- RoPE tables are built from small per-axis tables ([Ws, head/4] and [Hs, head/4]) with the
  same float32 arithmetic as upstream, then broadcast to [Hs*Ws, head/2]: the x and y
  frequencies are interleaved pair by pair (pair 2k uses column position, 2k+1 row position).
- The pixel sin/cos table is *separable*: a [W, dim/2] column table and an [H, dim/2] row table
  are computed on the host in float64 (Python floats, as upstream computes it in float64),
  cast to float32 and broadcast in the graph; an [H*W, dim] constant is never built.
- The timestep sinusoid (arguments up to 1000 rad) is float32, never fp16.

Dynamic-shape export (:mod:`pid_trt.compile.dynamic`): when a size is a symbolic
``torch.SymInt`` (torch.export with ``dynamic_shapes``), the tables are built from the runtime
size as float32 tensor ops instead (Python ints would specialise the graph to one size, and
the lru_cache keyed on ints cannot take a symbol): RoPE's NTK theta and its linspace in
float32 (:func:`rope_axis_angles_graph`, within ~1e-6 of the host values), and the pixel table
as a slice of a host-computed float64 -> float32 table of :data:`PIXEL_TABLE_ROWS` rows (the
same numbers as the static table, since a row depends only on its absolute index). With plain
ints -- every eager call and every static export -- nothing changes.
"""

from __future__ import annotations

import functools
import math

import torch

from pid_trt.buckets import DYNAMIC_MAX_SIDE

F32 = torch.float32
#: Base of the 2-D image RoPE (before NTK scaling); upstream's fixed default.
IMAGE_ROPE_THETA = 10000.0
#: Image RoPE positions are normalised to [0, ROPE_POSITION_SCALE] along each axis.
ROPE_POSITION_SCALE = 16.0
#: Timestep sinusoid: 256 features, max period 10 (not 10000), cos half first.
TIMESTEP_FEATURES = 256
TIMESTEP_MAX_PERIOD = 10.0
#: Rows of the host pixel table that dynamic graphs slice (largest output side they serve).
PIXEL_TABLE_ROWS = DYNAMIC_MAX_SIDE


def is_symbolic(*sizes: object) -> bool:
    """True when any of ``sizes`` is a symbolic size (a ``torch.SymInt`` of dynamic-shape export)."""
    return any(isinstance(s, torch.SymInt) for s in sizes)


def size_tensor(n: int | torch.SymInt, device: torch.device | None = None) -> torch.Tensor:
    """A size as a float32 scalar tensor (in a graph: Shape -> Cast, no float64)."""
    return torch.scalar_tensor(n, dtype=F32, device=device)


def ntk_theta(grid: int, ref_grid: int, head_dim: int) -> float:
    """NTK-aware RoPE base for one axis: ``10000 * (grid / ref_grid) ** (a / (a - 2))``, a = head/2."""
    a = head_dim // 2
    factor = (grid / ref_grid) ** (a / (a - 2)) if a > 2 else 1.0
    return IMAGE_ROPE_THETA * factor


def _axis_angles(n: int, theta: float, head_dim: int, device: torch.device | None) -> torch.Tensor:
    """Angles [n, head/4] float32 of one image axis: linspace(0, 16, n) x theta^(-4k/head)."""
    exps = torch.arange(0, head_dim, 4, device=device)[: head_dim // 4].to(F32) / head_dim
    freqs = 1.0 / (theta**exps)
    pos = torch.linspace(0, ROPE_POSITION_SCALE, n, device=device, dtype=F32)
    return pos[:, None] * freqs[None, :]


def rope_axis_angles_graph(
    n: int | torch.SymInt, ref_grid: int, head_dim: int, device: torch.device | None = None
) -> torch.Tensor:
    """:func:`_axis_angles` with ``n`` known only at run time, in float32 tensor ops.

    theta^(-4k/head) = exp(-(4k/head) (ln 10000 + a/(a-2) ln(n/ref))) (NTK, a = head/2), and
    positions as torch.linspace(0, 16, n) computes them on the CPU (first half from the start,
    second half from the end). Needs n >= 2. Returns [n, head/4] float32.
    """
    a = head_dim // 2
    exps = torch.arange(0, head_dim, 4, device=device)[: head_dim // 4].to(F32) / head_dim
    nf = size_tensor(n, device)
    log_theta = math.log(IMAGE_ROPE_THETA)
    if a > 2:
        log_theta = log_theta + (a / (a - 2)) * torch.log(nf / float(ref_grid))
    freqs = torch.exp(-exps * log_theta)
    idx = torch.arange(n, device=device).to(F32)
    last = nf - 1.0
    step = ROPE_POSITION_SCALE / last
    half = torch.floor(nf / 2.0)
    pos = torch.where(idx < half, idx * step, ROPE_POSITION_SCALE - (last - idx) * step)
    return pos[:, None] * freqs[None, :]


def rope_2d(
    head_dim: int,
    grid_h: int,
    grid_w: int,
    ref_grid_h: int,
    ref_grid_w: int,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NTK-aware 2-D RoPE (cos, sin) for a grid_h x grid_w token grid, each [grid_h*grid_w, head/2]
    float32, tokens row-major. ``ref_grid_*`` is the training reference grid in tokens."""
    if is_symbolic(grid_h, grid_w):  # dynamic-shape export: from the runtime size, float32
        ax = rope_axis_angles_graph(grid_w, ref_grid_w, head_dim, device)
        ay = rope_axis_angles_graph(grid_h, ref_grid_h, head_dim, device)
    else:
        ax = _axis_angles(grid_w, ntk_theta(grid_w, ref_grid_w, head_dim), head_dim, device)  # [Ws, q]
        ay = _axis_angles(grid_h, ntk_theta(grid_h, ref_grid_h, head_dim), head_dim, device)  # [Hs, q]
    q = head_dim // 4
    shape = (grid_h, grid_w, q)

    def interleave(fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        both = torch.stack([fx[None, :, :].expand(shape), fy[:, None, :].expand(shape)], dim=-1)
        return both.reshape(grid_h * grid_w, 2 * q)

    return interleave(torch.cos(ax), torch.cos(ay)), interleave(torch.sin(ax), torch.sin(ay))


def rope_1d(
    head_dim: int, length: int, theta: float, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text RoPE (cos, sin), each [length, head/2] float32: integer positions x theta^(-2k/head)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).to(F32) / head_dim))
    angles = torch.arange(0, length, device=device).to(F32)[:, None] * freqs[None, :]
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (2j, 2j+1) of each head vector, in float32.

    x: [B, N, heads, head]; cos, sin: [N, head/2] -> [B, N, heads, head] float32.
    """
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    pairs = x.to(F32).reshape(*x.shape[:-1], -1, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    return torch.stack([re * c - im * s, re * s + im * c], dim=-1).flatten(3)


@functools.lru_cache(maxsize=64)
def _sincos_rows(n: int, dim: int) -> tuple[tuple[float, ...], ...]:
    """Rows p = 0..n-1 of [sin(p w_k), cos(p w_k)], w_k = 10000^(-k/(dim/2)), k < dim/2; float64."""
    half = dim // 2
    omega = [1.0 / (10000.0 ** (k / half)) for k in range(half)]
    return tuple(
        tuple(math.sin(p * w) for w in omega) + tuple(math.cos(p * w) for w in omega) for p in range(n)
    )


def pixel_pos_tables(
    dim: int, height: int, width: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable pixel position table: (column table [width, dim/2], row table [height, dim/2]),
    float32, computed on the host in float64 from absolute pixel indices.

    The full table at pixel (h, w) is ``cat(col[w], row[h])`` (see :func:`add_pixel_pos`).
    With a symbolic size (dynamic-shape export) both are slices of one
    :data:`PIXEL_TABLE_ROWS`-row table: the same rows, the length chosen at run time.
    """
    if is_symbolic(height, width):
        table = torch.tensor(_sincos_rows(PIXEL_TABLE_ROWS, dim // 2), dtype=F32, device=device)
        table = table.reshape(PIXEL_TABLE_ROWS, dim // 2)
        return table[:width], table[:height]
    col = torch.tensor(_sincos_rows(width, dim // 2), dtype=F32, device=device).reshape(width, dim // 2)
    row = torch.tensor(_sincos_rows(height, dim // 2), dtype=F32, device=device).reshape(height, dim // 2)
    return col, row


def add_pixel_pos(x: torch.Tensor, col: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """Add the broadcast pixel table to per-pixel features, in float32.

    x: [B, H, W, dim]; col: [W, dim/2]; row: [H, dim/2] -> [B, H, W, dim] float32.
    """
    h, w = row.shape[0], col.shape[0]
    half = col.shape[1]
    table = torch.cat([col[None, :, :].expand(h, w, half), row[:, None, :].expand(h, w, half)], dim=-1)
    return x.to(F32) + table[None]


def timestep_features(
    t: torch.Tensor, dim: int = TIMESTEP_FEATURES, max_period: float = TIMESTEP_MAX_PERIOD
) -> torch.Tensor:
    """Sinusoidal timestep features, float32: [cos(t f_k), sin(t f_k)], f_k = max_period^(-k/(dim/2)).

    t: [B] (already x1000) -> [B, dim] float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=F32, device=t.device) / half)
    args = t.to(F32)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
