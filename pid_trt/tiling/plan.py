"""The size policy: for an output size, one shot or a grid of tiles, and what each costs.

:func:`plan` decides (see :mod:`pid_trt.tiling.options` for the modes):

- one shot when the size is inside the net's trained envelope (:mod:`pid_trt.tiling.envelope`)
  or ``allow_untrained_size``, and the one-shot decode fits ``memory_free`` (when known);
- otherwise tiles: the given ``tile_size``, else the trained size (on the latent grid, no
  larger than the image) whose grid has the least estimated FLOP (fewest tiles on a tie),
  else (no envelope: tiling for memory only) the largest square whose tile batch fits;
- ``--tiles off`` outside the envelope without ``allow_untrained_size``: refused in one line
  naming the envelope and the way out, before anything else is checked.

The plan carries both ways' cost: FLOP per decode (:mod:`pid_trt.costmodel`, hoisted; a
tiled decode with more than one tile batch re-runs the per-decode work of each batch at every
step, because a bound backend holds one batch), attention share, activation memory and the
total memory estimate (:mod:`pid_trt.resources`: a tiled decode holds one tile batch plus the
full-size image buffers), and a roofline time floor on one GPU of :data:`pid_trt.costmodel.GPUS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pid_trt.config import NetConfig, Precision
from pid_trt.costmodel import estimate, floor_time, get_gpu
from pid_trt.errors import ConfigError
from pid_trt.resources import MemoryEstimate, estimate_decode_memory
from pid_trt.tiling.envelope import Envelope
from pid_trt.tiling.grid import TileGrid, grid_unit, make_grid
from pid_trt.tiling.options import TileMode, TileOptions

_GIB = float(1 << 30)
#: GPU whose roofline floor a plan reports by default.
DEFAULT_GPU = "H100 SXM"
#: Bytes per output pixel and image a tiled decode adds to the one-shot sampler buffers: the
#: float32 blended-prediction accumulator and the gathered tile windows.
TILED_PIXEL_BYTES = 3 * 4 * 2


@dataclass(frozen=True)
class EngineNeed:
    """One tile shape's backend: ``height`` x ``width`` pixels at ``batch`` tiles per call,
    ``tiles`` tiles in all (over the decode's batch), run in ``calls`` calls per step."""

    height: int
    width: int
    batch: int
    tiles: int

    @property
    def calls(self) -> int:
        return -(-self.tiles // self.batch)

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}"

    def build_command(self, net_args: str, precision: Precision) -> str:
        """The ``pidtrt build`` command of this shape's engine pair (TensorRT backend)."""
        return (
            f"pidtrt build {net_args} --size {self.name} --batch {self.batch} --precision {precision.value}"
        )


@dataclass(frozen=True)
class WayCost:
    """Estimated cost of one way of decoding.

    flops: FLOP per decode; attention_flops: the part in attention; activation_bytes: the
    activations of the largest single call (one shot: the image batch; tiled: one tile
    batch); memory: the whole estimate (weights, activations, sampler buffers, headroom);
    floor_s: roofline floor of the decode on the plan's GPU in seconds (None at fp32, which
    has no tensor-core peak in the model).
    """

    flops: float
    attention_flops: float
    activation_bytes: int
    memory: MemoryEstimate
    floor_s: float | None

    @property
    def attention_share(self) -> float:
        return self.attention_flops / self.flops if self.flops else 0.0


@dataclass(frozen=True)
class SizePlan:
    """How one decode runs: ``grid`` None = one shot. ``reason``: why (one sentence)."""

    height: int
    width: int
    batch: int
    steps: int
    precision: Precision
    envelope: Envelope | None
    inside: bool
    reason: str
    grid: TileGrid | None
    tile_batch: int
    engines: tuple[EngineNeed, ...]
    one_shot: WayCost
    tiled_cost: WayCost | None
    gpu: str

    @property
    def tiled(self) -> bool:
        return self.grid is not None

    @property
    def cost(self) -> WayCost:
        """The cost of the way this plan takes."""
        return self.tiled_cost if self.tiled_cost is not None and self.tiled else self.one_shot

    def render(self, net_name: str, net_args: str) -> str:
        """The plan as ``pidtrt decode --dry-run`` prints it (``net_args``: the model options of
        the ``pidtrt build`` commands, e.g. ``--backbone flux --ckpt-type 2k``)."""
        size = f"{self.width}x{self.height}"
        lines = [f"plan: {net_name}, {size}, batch {self.batch}, {self.precision.value}, {self.steps} steps"]
        if self.envelope is None:
            lines.append(
                "trained sizes: none given (every size is decoded in one shot unless tiles are asked for)"
            )
        else:
            lines.append(f"trained sizes of {self.envelope.name}: {self.envelope.describe()}")
        lines.append(f"decision: {'tiled' if self.tiled else 'one shot'}: {self.reason}")
        if self.grid is not None:
            g = self.grid
            ox, oy = g.overlaps()
            overlap = [
                f"{o} px between {axis}"
                for o, axis, k in ((ox, "columns", g.cols), (oy, "rows", g.rows))
                if k > 1
            ]
            lines.append(
                f"tiles: {g.cols}x{g.rows} = {g.count} per image, {g.tile_width}x{g.tile_height} px, overlap "
                f"{', '.join(overlap) or 'none'}, tile batch {self.tile_batch}"
            )
            lines.append(
                f"  columns at x = {', '.join(map(str, g.lefts))}; rows at y = {', '.join(map(str, g.tops))}"
            )
        for need in self.engines:
            calls = f", {need.tiles} tile(s) in {need.calls} call(s) per step" if self.tiled else ""
            lines.append(f"engine: {need.name} batch {need.batch}{calls}")
            lines.append(f"  tensorrt: {need.build_command(net_args, self.precision)}")
        lines += _cost_table(self)
        return "\n".join(lines)


def _fmt_flops(x: float) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if x >= scale:
            return f"{x / scale:.2f} {prefix}FLOP"
    return f"{x:.0f} FLOP"


def _cost_table(p: SizePlan) -> list[str]:
    ways = [("one shot", p.one_shot)] + ([("tiled", p.tiled_cost)] if p.tiled_cost is not None else [])
    floor = f"{p.gpu} floor" if p.precision is not Precision.FP32 else "time floor (n/a at fp32)"
    rows = [
        ("FLOP / decode", [_fmt_flops(c.flops) for _, c in ways]),
        ("attention share", [f"{100 * c.attention_share:.0f}%" for _, c in ways]),
        ("activations", [f"{c.activation_bytes / _GIB:.2f} GiB" for _, c in ways]),
        ("memory estimate", [f"{c.memory.total / _GIB:.2f} GiB" for _, c in ways]),
        (floor, [f"{c.floor_s * 1e3:.0f} ms" if c.floor_s is not None else "-" for _, c in ways]),
    ]
    width = max(len(r[0]) for r in rows) + 4
    out = ["cost (estimates)".ljust(width) + "".join(name.ljust(18) for name, _ in ways).rstrip()]
    for label, cells in rows:
        out.append(("  " + label).ljust(width) + "".join(c.ljust(18) for c in cells).rstrip())
    return out


# ---------------------------------------------------------------------- costs
def _cost_parts(config: NetConfig, h: int, w: int, n: int, steps: int, precision: Precision, gpu: str):
    est = estimate(config, h, w, n, steps, precision)
    f = est.flops
    attn = f.mmdit_attention + f.pit_attention
    floor_step = floor_once = None
    if precision is not Precision.FP32:
        spec = get_gpu(gpu)
        floor_step = floor_time(est, spec, per="step")
        floor_once = floor_time(est, spec, per="decode") - steps * floor_step
    return est, attn, floor_step, floor_once


def one_shot_cost(
    config: NetConfig, height: int, width: int, batch: int, steps: int, precision: Precision,
    load_precision: Precision | None = None, gpu: str = DEFAULT_GPU,
) -> WayCost:  # fmt: skip
    """Cost of decoding the whole image in one call per step."""
    est, attn, fs, fo = _cost_parts(config, height, width, batch, steps, precision, gpu)
    mem = estimate_decode_memory(config, height, width, batch, precision, steps, load_precision)
    return WayCost(
        flops=est.flops_per_decode,
        attention_flops=steps * attn,
        activation_bytes=mem.activations,
        memory=mem,
        floor_s=None if fs is None else steps * fs + fo,
    )


def tiled_cost(
    config: NetConfig, grid: TileGrid, batch: int, tile_batch: int, steps: int, precision: Precision,
    load_precision: Precision | None = None, gpu: str = DEFAULT_GPU,
) -> WayCost:  # fmt: skip
    """Cost of a tiled decode of ``batch`` images over ``grid`` in tile batches of ``tile_batch``."""
    needs = engine_needs(grid, batch, tile_batch)
    rebind = sum(n.calls for n in needs) > 1
    flops = attn_total = 0.0
    floor: float | None = 0.0
    worst: MemoryEstimate | None = None
    for need in needs:
        est, attn, fs, fo = _cost_parts(config, need.height, need.width, need.batch, steps, precision, gpu)
        once_runs = steps if rebind else 1
        flops += need.calls * (steps * est.flops_per_step_hoisted + once_runs * est.flops.hoistable)
        attn_total += need.calls * steps * attn
        if floor is not None and fs is not None:
            floor += need.calls * (steps * fs + once_runs * fo)
        else:
            floor = None
        mem = estimate_decode_memory(
            config, need.height, need.width, need.batch, precision, steps, load_precision
        )
        if worst is None or mem.activations + mem.sampler > worst.activations + worst.sampler:
            worst = mem
    assert worst is not None
    full = estimate_decode_memory(config, grid.height, grid.width, batch, precision, steps, load_precision)
    pixels = batch * grid.height * grid.width
    memory = MemoryEstimate(
        weights=worst.weights,
        activations=worst.activations,
        sampler=worst.sampler + full.sampler + pixels * TILED_PIXEL_BYTES,
    )
    return WayCost(flops, attn_total, worst.activations, memory, floor)


def engine_needs(grid: TileGrid, batch: int, tile_batch: int) -> tuple[EngineNeed, ...]:
    """Per tile shape: the backend shape, its batch (at most ``tile_batch``) and tile count."""
    out = []
    for (h, w), count in grid.shapes().items():
        tiles = count * batch
        out.append(EngineNeed(h, w, min(tile_batch, tiles), tiles))
    return tuple(out)


# ---------------------------------------------------------------------- the policy
def refusal(height: int, width: int, envelope: Envelope) -> str:
    """The one-line refusal of a one-shot decode outside the envelope."""
    return (
        f"{width}x{height} is outside the trained sizes of {envelope.name} ({envelope.describe()}): "
        "decode it in tiles of a trained size (--tiles auto) or force one shot with --allow-untrained-size"
    )


def _candidates(config: NetConfig, height: int, width: int, envelope: Envelope) -> list[tuple[int, int]]:
    """Trained sizes on the latent grid as tiles: those no larger than the image, else (none
    fits) the trained sizes clipped to the image."""
    unit = grid_unit(config)
    ext_h, ext_w = -(-height // unit) * unit, -(-width // unit) * unit
    on_grid = [(b.height, b.width) for b in envelope.sizes if b.height % unit == 0 and b.width % unit == 0]
    if not on_grid:
        raise ConfigError(
            f"no trained size of {envelope.name} is on the {unit}-px latent grid: pass --tile-size WxH"
        )
    fits = [(h, w) for h, w in on_grid if h <= ext_h and w <= ext_w]
    if fits:
        return fits
    return sorted({(min(h, ext_h), min(w, ext_w)) for h, w in on_grid})


def plan(
    config: NetConfig,
    height: int,
    width: int,
    options: TileOptions | None = None,
    *,
    envelope: Envelope | None = None,
    batch: int = 1,
    steps: int = 4,
    precision: Precision | str = Precision.BF16,
    load_precision: Precision | str | None = None,
    memory_free: int | None = None,
    gpu: str = DEFAULT_GPU,
) -> SizePlan:
    """Decide one shot or tiles for a ``width`` x ``height`` decode of ``batch`` images.

    ``memory_free``: bytes the device has (None: unknown, memory never forces tiles);
    ``precision`` / ``load_precision``: as :func:`pid_trt.resources.estimate_decode_memory`.
    Raises ConfigError (one line) for bad tile options and for ``--tiles off`` outside the
    envelope without ``allow_untrained_size``.
    """
    options = options or TileOptions()
    precision = Precision(precision)
    load = None if load_precision is None else Precision(load_precision)
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % config.patch_size:
            raise ConfigError(f"output {name}={value!r}: expected a positive multiple of {config.patch_size}")
    inside = envelope is None or envelope.covers(height, width)
    if options.mode is TileMode.OFF and not inside and not options.allow_untrained_size:
        assert envelope is not None
        raise ConfigError(refusal(height, width, envelope))
    one = one_shot_cost(config, height, width, batch, steps, precision, load, gpu)
    args = (config, height, width, options, batch, steps, precision, load, memory_free, gpu)
    grid, reason = _decide(args, envelope, inside, one)
    if grid is None:
        needs: tuple[EngineNeed, ...] = (EngineNeed(height, width, batch, batch),)
        cost = None
    else:
        needs = engine_needs(grid, batch, options.batch)
        cost = tiled_cost(config, grid, batch, options.batch, steps, precision, load, gpu)
    return SizePlan(
        height, width, batch, steps, precision, envelope, inside, reason, grid, options.batch, needs, one, cost, gpu
    )  # fmt: skip


def _decide(
    args: tuple, envelope: Envelope | None, inside: bool, one: WayCost
) -> tuple[TileGrid | None, str]:
    """(grid or None for one shot, the reason) by the options' mode; ``args``: the
    :func:`_auto_tiles` arguments before ``envelope``."""
    config, height, width, options, _b, _s, _p, _l, memory_free, _g = args
    where = (
        "no trained sizes are known for this net"
        if envelope is None
        else f"{width}x{height} is {'inside' if inside else 'outside'} the trained sizes"
    )
    forced = "" if inside else " (--allow-untrained-size)"
    if options.mode is TileMode.OFF:
        return None, f"--tiles off; {where}{forced}"
    if options.mode is TileMode.GRID:
        grid = make_grid(config, height, width, options.tile_size, options)
        return grid, f"--tiles {options.grid[0]}x{options.grid[1]}; {where}"
    for_quality = not (inside or options.allow_untrained_size)
    if not for_quality and (memory_free is None or one.memory.total <= memory_free):
        return None, f"{where}{forced}"
    why = where if for_quality else (
        f"a one-shot decode needs about {one.memory.total / _GIB:.1f} GiB, more than the "
        f"{memory_free / _GIB:.1f} GiB available"
    )  # fmt: skip
    if options.tile_size is not None:
        return make_grid(config, height, width, options.tile_size, options), why
    grid, reason = _auto_tiles(*args, envelope, for_quality)
    return grid, (f"{why}; {reason}" if grid is not None else f"{where}; {reason}")


def _auto_tiles(
    config: NetConfig, height: int, width: int, options: TileOptions, batch: int, steps: int,
    precision: Precision, load: Precision | None, memory_free: int | None, gpu: str,
    envelope: Envelope | None, for_quality: bool,
) -> tuple[TileGrid | None, str]:  # fmt: skip
    """``--tiles auto`` where tiles are wanted: (the grid, why that tile) or (None: one shot,
    why no tile does). With an envelope: the trained size whose grid has the least FLOP among
    those that fit the memory; without one (tiles for memory only): the largest square that fits."""
    if envelope is not None:
        best: tuple[float, int, TileGrid] | None = None
        for tile in _candidates(config, height, width, envelope):
            grid = make_grid(config, height, width, tile, options)
            cost = tiled_cost(config, grid, batch, options.batch, steps, precision, load, gpu)
            if memory_free is not None and cost.memory.total > memory_free:
                continue
            if best is None or (cost.flops, grid.count) < best[:2]:
                best = (cost.flops, grid.count, grid)
        if best is not None:
            g = best[2]
            return g, f"tiles of {g.tile_width}x{g.tile_height}, the trained size with the least FLOP"
        if for_quality:  # nothing fits the memory: the smallest trained tile (the memory check refuses it)
            tile = min(_candidates(config, height, width, envelope), key=lambda t: t[0] * t[1])
            return make_grid(config, height, width, tile, options), "no tile batch fits the memory"
        return None, "no tile batch fits the memory either"
    assert memory_free is not None
    tile = _largest_fitting_tile(
        config, height, width, options, batch, steps, precision, load, memory_free, gpu
    )
    if tile is None:  # one shot: its memory check says what would fit
        return None, "no tile batch fits the memory either"
    return make_grid(config, height, width, tile, options), "tiles of the largest square that fits"


def _largest_fitting_tile(
    config: NetConfig, height: int, width: int, options: TileOptions, batch: int, steps: int,
    precision: Precision, load: Precision | None, memory_free: int, gpu: str,
) -> tuple[int, int] | None:  # fmt: skip
    """The largest square tile (clipped to the image) whose tiled decode fits ``memory_free``;
    None when not even one grid step does."""
    unit = grid_unit(config)
    ext_h, ext_w = -(-height // unit) * unit, -(-width // unit) * unit

    def tile_of(k: int) -> tuple[int, int]:
        return min(k * unit, ext_h), min(k * unit, ext_w)

    def fits(k: int) -> bool:
        grid = make_grid(config, height, width, tile_of(k), options)
        return (
            tiled_cost(config, grid, batch, options.batch, steps, precision, load, gpu).memory.total
            <= memory_free
        )

    lo, hi = 1, max(ext_h, ext_w) // unit  # largest k that fits, by bisection (fits is monotone enough)
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return tile_of(lo)
