"""What a way of decoding costs: FLOP, attention share, activation memory, the whole memory
estimate and a roofline time floor, for one shot or for a grid of tiles.

A :class:`Costing` holds what every cost of one decode shares (the net, images per decode,
sampler steps, precision, the weights' load precision, the GPU of the floor); its
:meth:`Costing.one_shot` and :meth:`Costing.tiled` price one way each. FLOP come from
:mod:`pid_trt.costmodel` (hoisted: the per-decode work runs once; a tiled decode with more
than one tile batch re-runs it for every batch at every step, because a bound backend holds
one batch), memory from :mod:`pid_trt.resources` (a tiled decode holds one tile batch plus
the full-size image buffers).
"""

from __future__ import annotations

from dataclasses import dataclass

from pid_trt.config import NetConfig, Precision
from pid_trt.costmodel import CostEstimate, estimate, floor_time, get_gpu
from pid_trt.resources import MemoryEstimate, estimate_decode_memory
from pid_trt.tiling.grid import TileGrid

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


def engine_needs(grid: TileGrid, batch: int, tile_batch: int) -> tuple[EngineNeed, ...]:
    """Per tile shape: the backend shape, its batch (at most ``tile_batch``) and tile count."""
    out = []
    for (h, w), count in grid.shapes().items():
        tiles = count * batch
        out.append(EngineNeed(h, w, min(tile_batch, tiles), tiles))
    return tuple(out)


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
class _CallCost:
    """One backend call shape's figures: the estimate, attention FLOP per step, and the
    roofline floor per step and of the once-per-decode part (None at fp32)."""

    estimate: CostEstimate
    attention_flops: float
    floor_step: float | None
    floor_once: float | None


@dataclass(frozen=True)
class Costing:
    """What every cost of one decode shares: ``config`` (the net), ``batch`` images per
    decode, ``steps`` sampler steps, ``precision``, ``load_precision`` (the width the weights
    are staged in, as :func:`pid_trt.resources.estimate_decode_memory`; None: ``precision``)
    and ``gpu`` (a :data:`pid_trt.costmodel.GPUS` name, for the roofline floor)."""

    config: NetConfig
    batch: int = 1
    steps: int = 4
    precision: Precision = Precision.BF16
    load_precision: Precision | None = None
    gpu: str = DEFAULT_GPU

    def _call(self, height: int, width: int, batch: int) -> _CallCost:
        est = estimate(self.config, height, width, batch, self.steps, self.precision)
        attention = est.flops.mmdit_attention + est.flops.pit_attention
        if self.precision is Precision.FP32:
            return _CallCost(est, attention, None, None)
        spec = get_gpu(self.gpu)
        step = floor_time(est, spec, per="step")
        return _CallCost(est, attention, step, floor_time(est, spec, per="decode") - self.steps * step)

    def _memory(self, height: int, width: int, batch: int) -> MemoryEstimate:
        return estimate_decode_memory(
            self.config, height, width, batch, self.precision, self.steps, self.load_precision
        )

    def one_shot(self, height: int, width: int) -> WayCost:
        """Cost of decoding the whole ``width`` x ``height`` image in one call per step."""
        call = self._call(height, width, self.batch)
        mem = self._memory(height, width, self.batch)
        floor = None
        if call.floor_step is not None and call.floor_once is not None:
            floor = self.steps * call.floor_step + call.floor_once
        return WayCost(
            flops=call.estimate.flops_per_decode,
            attention_flops=self.steps * call.attention_flops,
            activation_bytes=mem.activations,
            memory=mem,
            floor_s=floor,
        )

    def tiled(self, grid: TileGrid, tile_batch: int) -> WayCost:
        """Cost of a tiled decode over ``grid`` in tile batches of ``tile_batch``."""
        needs = engine_needs(grid, self.batch, tile_batch)
        once_runs = self.steps if sum(n.calls for n in needs) > 1 else 1  # > 1 call: re-bind per step
        flops = attention = 0.0
        floor: float | None = 0.0
        worst: MemoryEstimate | None = None
        for need in needs:
            call = self._call(need.height, need.width, need.batch)
            est = call.estimate
            flops += need.calls * (self.steps * est.flops_per_step_hoisted + once_runs * est.flops.hoistable)
            attention += need.calls * self.steps * call.attention_flops
            if floor is not None and call.floor_step is not None and call.floor_once is not None:
                floor += need.calls * (self.steps * call.floor_step + once_runs * call.floor_once)
            else:
                floor = None
            mem = self._memory(need.height, need.width, need.batch)
            if worst is None or mem.activations + mem.sampler > worst.activations + worst.sampler:
                worst = mem
        assert worst is not None
        full = self._memory(grid.height, grid.width, self.batch)
        pixels = self.batch * grid.height * grid.width
        memory = MemoryEstimate(
            weights=worst.weights,
            activations=worst.activations,
            sampler=worst.sampler + full.sampler + pixels * TILED_PIXEL_BYTES,
        )
        return WayCost(flops, attention, worst.activations, memory, floor)
