"""Any output size: the trained size envelope, the one-shot-or-tiles policy, tile grids with
blend weights, and the tiled denoiser that runs a grid inside the sampler.

- :mod:`~pid_trt.tiling.envelope`: each checkpoint type's trained sizes, as data.
- :mod:`~pid_trt.tiling.options`: ``--tiles / --tile-size / --tile-overlap / --tile-batch``.
- :mod:`~pid_trt.tiling.grid`: tiles on the latent grid and their blend weights.
- :mod:`~pid_trt.tiling.cost`: what one shot and a tile grid cost (:class:`Costing`).
- :mod:`~pid_trt.tiling.plan`: the policy: one shot or tiles (:class:`SizePlan`).
- :mod:`~pid_trt.tiling.render`: a plan as ``pidtrt decode --dry-run`` prints it.
- :mod:`~pid_trt.tiling.denoiser`: :class:`TiledDenoiser`, a Denoiser over the full image.
- :mod:`~pid_trt.tiling.runner`: :class:`PlanRunner`, a plan run against a backend cache
  (memory checks, backends per tile shape and per ``--devices`` entry).

The options, the grid, the plan and its cost import no torch: :class:`TiledDenoiser` and
:class:`PlanRunner` (which do) are imported on first use, so that a client of the server
reads the tiling options without loading torch.
"""

from typing import TYPE_CHECKING, Any

from pid_trt.tiling.cost import Costing, EngineNeed, WayCost
from pid_trt.tiling.envelope import Envelope, envelope_for
from pid_trt.tiling.grid import Tile, TileGrid, default_overlap, grid_unit, make_grid
from pid_trt.tiling.options import TileMode, TileOptions
from pid_trt.tiling.plan import SizePlan, plan, refusal

if TYPE_CHECKING:
    from pid_trt.tiling.denoiser import TiledDenoiser
    from pid_trt.tiling.runner import PlanRunner

__all__ = [
    "Costing",
    "EngineNeed",
    "Envelope",
    "PlanRunner",
    "SizePlan",
    "Tile",
    "TileGrid",
    "TileMode",
    "TileOptions",
    "TiledDenoiser",
    "WayCost",
    "default_overlap",
    "envelope_for",
    "grid_unit",
    "make_grid",
    "plan",
    "refusal",
]


def __getattr__(name: str) -> Any:
    """:class:`TiledDenoiser` and :class:`PlanRunner`, imported on first use (they need torch)."""
    if name == "TiledDenoiser":
        from pid_trt.tiling.denoiser import TiledDenoiser

        return TiledDenoiser
    if name == "PlanRunner":
        from pid_trt.tiling.runner import PlanRunner

        return PlanRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
