"""Tiled decoding inside the sampler: a :class:`~pid_trt.sampling.Denoiser` over the full image
that evaluates the network tile by tile and blends the predictions.

At each call (one sampler step) every tile's network call sees its window of the current
full-size image ``x`` and its crop of the latent (whole latent cells: exact), positioned as a
standalone image of its size (its own RoPE and pixel positions: the backend sees an image of
the tile's size); the caption and degrade sigma of its image row are shared by all its tiles.
The velocities are blended with the grid's weights (they sum to one at every pixel) into one
full-size prediction, from which the unchanged sampler computes x0 and re-noises with its
full-size noise, exactly as an untiled decode does.

Tiles of one shape run through one backend in batches of ``tile_batch`` (tiles of several
image rows mix in a batch). ``bind`` maps one batch's :class:`Conditioning` (tile size,
latent crops) to a denoiser; a backend holds one bound batch at a time (TensorRT binds into
its own buffers), so with more than one batch per step each batch is re-bound at every step
(the latent adapter and caption projection re-run: a few percent of the work); with exactly
one batch it is bound once.

Several binders (one backend per device, ``--devices``): batch ``i`` goes to binder
``i % n``; each binder's batches run in order on its own thread, the binders concurrently,
and their predictions are blended on ``x``'s device in batch order, so the result is the
one-binder result bit for bit wherever the backends compute the same numbers. A binder with
exactly one batch binds it once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from pid_trt.backends.base import Conditioning
from pid_trt.errors import ConfigError
from pid_trt.sampling import Denoiser
from pid_trt.tiling.grid import Tile, TileGrid

#: Binds one tile batch's conditioning (the backend for its size and batch) -> its denoiser.
Binder = Callable[[Conditioning], Denoiser]


@dataclass(frozen=True)
class TileBatch:
    """One backend call: (image row, tile) per batch entry, and its conditioning; ``real`` of
    the entries are real tiles, the rest (``pad_batches``) repeat the last one."""

    units: tuple[tuple[int, Tile], ...]
    cond: Conditioning
    real: int


class TiledDenoiser:
    """Denoiser over full-size ``x`` [B, 3, H, W]: per-tile velocities blended (see module doc).

    grid: the tiles of the ``cond.width`` x ``cond.height`` image; cond: the full decode's
    conditioning (latent [B, C, h, w], caption [B, T, D], degrade_sigma [B]); bind: see
    :data:`Binder`, or several (one per device: see the module docstring); tile_batch: tiles per call (>= 1); pad_batches: fill the last batch of
    each shape up to the shape's batch by repeating its last tile (backends of one static
    batch: ONNX Runtime, TensorRT), else it runs smaller (torch).
    """

    def __init__(
        self,
        grid: TileGrid,
        cond: Conditioning,
        bind: Binder | Sequence[Binder],
        tile_batch: int = 1,
        pad_batches: bool = False,
    ) -> None:
        if isinstance(tile_batch, bool) or not isinstance(tile_batch, int) or tile_batch < 1:
            raise ConfigError(f"tile_batch={tile_batch!r}: expected an integer >= 1")
        if (grid.height, grid.width) != (cond.height, cond.width):
            raise ConfigError(
                f"tile grid for {grid.width}x{grid.height}: the decode is {cond.width}x{cond.height}"
            )
        lat_h, lat_w = int(cond.latent.shape[-2]), int(cond.latent.shape[-1])
        need_h, need_w = -(-grid.height // grid.cell), -(-grid.width // grid.cell)
        if (lat_h, lat_w) != (need_h, need_w):
            raise ConfigError(
                f"latent {lat_h}x{lat_w} for a {grid.width}x{grid.height} tile grid: expected {need_h}x{need_w} "
                f"cells ({grid.cell} px per cell)"
            )
        binders = (bind,) if callable(bind) else tuple(bind)
        if not binders:
            raise ConfigError("TiledDenoiser: expected at least one binder")
        self.grid, self.cond, self._binders = grid, cond, binders
        self.tile_batch = tile_batch
        self.batches = self._batches(pad_batches)
        owners = [i % len(binders) for i in range(len(self.batches))]
        self._owner = tuple(owners)
        #: batch index -> its denoiser, for the batches whose binder has no other batch (bound once).
        self._keep = {i for i, k in enumerate(owners) if owners.count(k) == 1}
        self._bound: dict[int, Denoiser] = {}
        self._weights: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _batches(self, pad: bool) -> tuple[TileBatch, ...]:
        cond, grid = self.cond, self.grid
        out = []
        for shape in grid.shapes():
            units = [(b, tile) for tile in grid.tiles if tile.shape == shape for b in range(cond.batch)]
            size = min(self.tile_batch, len(units))
            for i in range(0, len(units), size):
                chunk = units[i : i + size]
                real = len(chunk)
                if pad and real < size:
                    chunk = chunk + [chunk[-1]] * (size - real)
                out.append(TileBatch(tuple(chunk), self._conditioning(chunk, shape), real))
        return tuple(out)

    def _conditioning(self, units: list[tuple[int, Tile]], shape: tuple[int, int]) -> Conditioning:
        cond, cell = self.cond, self.grid.cell
        rows = torch.tensor([b for b, _ in units], dtype=torch.long)
        crops = []
        for b, tile in units:
            ys, xs = tile.latent_window(cell)
            crops.append(cond.latent[b : b + 1, :, ys, xs])
        latent = torch.cat(crops).contiguous()
        caption = cond.caption.index_select(0, rows.to(cond.caption.device))
        sigma = cond.degrade_sigma.reshape(-1).index_select(0, rows.to(cond.degrade_sigma.device))
        return Conditioning(latent, caption, sigma, shape[0], shape[1])

    @property
    def calls_per_step(self) -> int:
        """Backend calls per sampler step."""
        return len(self.batches)

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """x: [B, 3, H, W] float32; t in [0, 1] -> blended velocity [B, 3, H, W] float32."""
        if tuple(x.shape[-2:]) != (self.grid.height, self.grid.width) or x.shape[0] != self.cond.batch:
            raise ConfigError(
                f"x shape {tuple(x.shape)}: expected [{self.cond.batch}, 3, {self.grid.height}, {self.grid.width}]"
            )
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        if x.device not in self._weights:
            self._weights[x.device] = tuple(w.to(x.device) for w in self.grid.axis_weights)  # type: ignore[assignment]
        wy, wx = self._weights[x.device]
        if len(self._binders) == 1:
            for i, batch in enumerate(self.batches):
                self._blend(out, batch, self._run(i, x, t), wy, wx)
            return out
        with ExitStack() as stack:  # one thread per binder: its batches in order, binders at once
            pools = [
                stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix=f"pid-tiles-{k}"))
                for k in range(len(self._binders))
            ]
            futures: list[Future] = [
                pools[self._owner[i]].submit(self._run, i, x, t) for i in range(len(self.batches))
            ]
            try:
                for i, batch in enumerate(self.batches):
                    self._blend(out, batch, futures[i].result(), wy, wx)
            except BaseException:
                for f in futures:  # a failed batch fails the step: run nothing more
                    f.cancel()
                raise
        return out

    def _run(self, i: int, x: torch.Tensor, t: float) -> torch.Tensor:
        """Batch ``i``'s velocities [batch, 3, h, w] float32 on ``x``'s device."""
        batch = self.batches[i]
        denoise = self._bound.get(i)
        if denoise is None:
            denoise = self._binders[self._owner[i]](batch.cond)
            if i in self._keep:
                self._bound[i] = denoise
        windows = [x[b : b + 1, :, tile.pixel_window()[0], tile.pixel_window()[1]] for b, tile in batch.units]
        return denoise(torch.cat(windows), t).to(device=x.device, dtype=torch.float32)

    @staticmethod
    def _blend(
        out: torch.Tensor, batch: TileBatch, v: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor
    ) -> None:
        for j, (b, tile) in enumerate(batch.units[: batch.real]):
            ys, xs = tile.pixel_window()
            weight = wy[tile.row, ys][:, None] * wx[tile.col, xs][None, :]
            out[b, :, ys, xs] += v[j] * weight
