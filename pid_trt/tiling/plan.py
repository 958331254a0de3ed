"""The size policy: for an output size, one shot or a grid of tiles, and what each costs.

:func:`plan` decides (see :mod:`pid_trt.tiling.options` for the modes):

- one shot when the size is inside the net's trained envelope (:mod:`pid_trt.tiling.envelope`)
  or ``allow_untrained_size``, and the one-shot decode fits ``memory_free`` (when known);
- otherwise tiles: the given ``tile_size``, else the trained size (on the latent grid, no
  larger than the image) whose grid has the least estimated FLOP (fewest tiles on a tie),
  else (no envelope: tiling for memory only) the largest square whose tile batch fits;
- ``--tiles off`` outside the envelope without ``allow_untrained_size``: refused in one line
  naming the envelope and the way out, before anything else is checked.

The plan carries both ways' cost (:mod:`pid_trt.tiling.cost`: FLOP per decode, attention
share, activation memory, the total memory estimate and a roofline time floor on one GPU of
:data:`pid_trt.costmodel.GPUS`); :mod:`pid_trt.tiling.render` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pid_trt.config import NetConfig, Precision
from pid_trt.errors import ConfigError
from pid_trt.tiling.cost import DEFAULT_GPU, Costing, EngineNeed, WayCost, engine_needs
from pid_trt.tiling.envelope import Envelope
from pid_trt.tiling.grid import TileGrid, grid_unit, make_grid
from pid_trt.tiling.options import TileMode, TileOptions

_GIB = float(1 << 30)


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
        """The plan as ``pidtrt decode --dry-run`` prints it (:func:`pid_trt.tiling.render.render_plan`)."""
        from pid_trt.tiling.render import render_plan

        return render_plan(self, net_name, net_args)


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
    load = None if load_precision is None else Precision(load_precision)
    costing = Costing(config, batch, steps, Precision(precision), load, gpu)
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % config.patch_size:
            raise ConfigError(f"output {name}={value!r}: expected a positive multiple of {config.patch_size}")
    inside = envelope is None or envelope.covers(height, width)
    if options.mode is TileMode.OFF and not inside and not options.allow_untrained_size:
        assert envelope is not None
        raise ConfigError(refusal(height, width, envelope))
    one = costing.one_shot(height, width)
    grid, reason = _decide(costing, height, width, options, envelope, inside, one, memory_free)
    if grid is None:
        needs: tuple[EngineNeed, ...] = (EngineNeed(height, width, batch, batch),)
        cost = None
    else:
        needs = engine_needs(grid, batch, options.batch)
        cost = costing.tiled(grid, options.batch)
    return SizePlan(
        height, width, batch, steps, costing.precision, envelope, inside, reason, grid, options.batch, needs, one,
        cost, gpu,
    )  # fmt: skip


def _decide(
    costing: Costing, height: int, width: int, options: TileOptions, envelope: Envelope | None,
    inside: bool, one: WayCost, memory_free: int | None,
) -> tuple[TileGrid | None, str]:  # fmt: skip
    """(grid or None for one shot, the reason) by the options' mode; ``one``: the one-shot cost."""
    config = costing.config
    where = (
        "no trained sizes are known for this net"
        if envelope is None
        else f"{width}x{height} is {'inside' if inside else 'outside'} the trained sizes"
    )
    forced = "" if inside else " (--allow-untrained-size)"
    if options.mode is TileMode.OFF:
        return None, f"--tiles off; {where}{forced}"
    if options.mode is TileMode.GRID:
        assert options.grid is not None
        grid = make_grid(config, height, width, options.tile_size, options)
        return grid, f"--tiles {options.grid[0]}x{options.grid[1]}; {where}"
    for_quality = not (inside or options.allow_untrained_size)
    if not for_quality and (memory_free is None or one.memory.total <= memory_free):
        return None, f"{where}{forced}"
    why = where
    if not for_quality:  # tiles for memory: memory_free is known (None returned above)
        assert memory_free is not None
        why = (
            f"a one-shot decode needs about {one.memory.total / _GIB:.1f} GiB, more than the "
            f"{memory_free / _GIB:.1f} GiB available"
        )
    if options.tile_size is not None:
        return make_grid(config, height, width, options.tile_size, options), why
    found, reason = _auto_tiles(costing, height, width, options, envelope, memory_free, for_quality)
    return found, (f"{why}; {reason}" if found is not None else f"{where}; {reason}")


def _auto_tiles(
    costing: Costing, height: int, width: int, options: TileOptions, envelope: Envelope | None,
    memory_free: int | None, for_quality: bool,
) -> tuple[TileGrid | None, str]:  # fmt: skip
    """``--tiles auto`` where tiles are wanted: (the grid, why that tile) or (None: one shot,
    why no tile does). With an envelope: the trained size whose grid has the least FLOP among
    those that fit the memory; without one (tiles for memory only): the largest square that fits."""
    config = costing.config
    if envelope is not None:
        best: tuple[float, int, TileGrid] | None = None
        for tile in _candidates(config, height, width, envelope):
            grid = make_grid(config, height, width, tile, options)
            cost = costing.tiled(grid, options.batch)
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
    square = _largest_fitting_tile(costing, height, width, options, memory_free)
    if square is None:  # one shot: its memory check says what would fit
        return None, "no tile batch fits the memory either"
    return make_grid(config, height, width, square, options), "tiles of the largest square that fits"


def _largest_fitting_tile(
    costing: Costing, height: int, width: int, options: TileOptions, memory_free: int
) -> tuple[int, int] | None:
    """The largest square tile (clipped to the image) whose tiled decode fits ``memory_free``;
    None when not even one grid step does."""
    config = costing.config
    unit = grid_unit(config)
    ext_h, ext_w = -(-height // unit) * unit, -(-width // unit) * unit

    def tile_of(k: int) -> tuple[int, int]:
        return min(k * unit, ext_h), min(k * unit, ext_w)

    def fits(k: int) -> bool:
        grid = make_grid(config, height, width, tile_of(k), options)
        return costing.tiled(grid, options.batch).memory.total <= memory_free

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
