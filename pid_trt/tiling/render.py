"""A :class:`~pid_trt.tiling.plan.SizePlan` as text: what ``pidtrt decode --dry-run`` prints
(the decision, the tiles, each engine with the ``pidtrt build`` command that makes it, and
both ways' cost), kept apart from the policy that decides the plan."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pid_trt.config import Precision
from pid_trt.tiling.cost import EngineNeed, WayCost

if TYPE_CHECKING:
    from pid_trt.tiling.plan import SizePlan

_GIB = float(1 << 30)


def build_command(need: EngineNeed, net_args: str, precision: Precision) -> str:
    """The ``pidtrt build`` command of ``need``'s engine pair (TensorRT backend); ``net_args``:
    the model options, e.g. ``--backbone flux --ckpt-type 2k``."""
    return f"pidtrt build {net_args} --size {need.name} --batch {need.batch} --precision {precision.value}"


def render_plan(plan: SizePlan, net_name: str, net_args: str) -> str:
    """``plan`` as ``pidtrt decode --dry-run`` prints it (``net_args``: the model options of
    the ``pidtrt build`` commands, e.g. ``--backbone flux --ckpt-type 2k``)."""
    size = f"{plan.width}x{plan.height}"
    lines = [f"plan: {net_name}, {size}, batch {plan.batch}, {plan.precision.value}, {plan.steps} steps"]
    if plan.envelope is None:
        lines.append(
            "trained sizes: none given (every size is decoded in one shot unless tiles are asked for)"
        )
    else:
        lines.append(f"trained sizes of {plan.envelope.name}: {plan.envelope.describe()}")
    lines.append(f"decision: {'tiled' if plan.tiled else 'one shot'}: {plan.reason}")
    if plan.grid is not None:
        g = plan.grid
        ox, oy = g.overlaps()
        overlap = [
            f"{o} px between {axis}"
            for o, axis, k in ((ox, "columns", g.cols), (oy, "rows", g.rows))
            if k > 1
        ]
        lines.append(
            f"tiles: {g.cols}x{g.rows} = {g.count} per image, {g.tile_width}x{g.tile_height} px, overlap "
            f"{', '.join(overlap) or 'none'}, tile batch {plan.tile_batch}"
        )
        lines.append(
            f"  columns at x = {', '.join(map(str, g.lefts))}; rows at y = {', '.join(map(str, g.tops))}"
        )
    for need in plan.engines:
        calls = f", {need.tiles} tile(s) in {need.calls} call(s) per step" if plan.tiled else ""
        lines.append(f"engine: {need.name} batch {need.batch}{calls}")
        lines.append(f"  tensorrt: {build_command(need, net_args, plan.precision)}")
    lines += cost_table(plan)
    return "\n".join(lines)


def format_flops(x: float) -> str:
    """``x`` FLOP with an SI prefix, e.g. ``1.94 PFLOP``."""
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if x >= scale:
            return f"{x / scale:.2f} {prefix}FLOP"
    return f"{x:.0f} FLOP"


def cost_table(plan: SizePlan) -> list[str]:
    """Both ways' estimates as the lines of a table, one column per way."""
    ways: list[tuple[str, WayCost]] = [("one shot", plan.one_shot)]
    if plan.tiled_cost is not None:
        ways.append(("tiled", plan.tiled_cost))
    floor = f"{plan.gpu} floor" if plan.precision is not Precision.FP32 else "time floor (n/a at fp32)"
    rows = [
        ("FLOP / decode", [format_flops(c.flops) for _, c in ways]),
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
