"""The step graph layer by layer: where does the candidate first leave the reference?

Both step graphs (``step.onnx`` of two exports: the fp32 reference and the candidate, e.g. an
fp16 graph or a modified copy) run on ONNX Runtime's CPU provider through Polygraphy with
every tensor marked as an output (``ModifyOutputs(..., outputs=MARK_ALL)``, ``OnnxrtRunner``,
``Comparator.run``), fed the same inputs. ``Comparator.compare_accuracy`` with
``L2CompareFunc`` then measures every tensor the two graphs share: tensors are matched by
name and shape (the exporter names a tensor after the traced op, e.g. ``linear_51``, so both
precisions share most names; fp16 graphs add Casts of their own, which match nothing).
A tensor diverges when its relative error ||a - b|| / ||b|| passes the bound (the norm of the
reference is the one figure computed here). Rows are listed in the candidate graph's
topological order, so the first row is the first layer that went wrong.

Marking every tensor keeps every activation in memory: use a small bucket (``--res 256``).
"""

from __future__ import annotations

import functools
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pid_trt.verify.metrics import polygraphy_compare, quiet

if TYPE_CHECKING:
    from pid_trt.backends.base import Conditioning
    from pid_trt.verify.pairs import InputResult, PairRequest, VerifyInput

#: Rows listed per section (first diverging / worst).
DEFAULT_LIMIT = 10


@dataclass(frozen=True)
class LayerRow:
    """One compared tensor: its producing node (name, op type, position in the candidate
    graph), the named weights that node reads, and the figures."""

    index: int
    tensor: str
    node: str
    op: str
    weights: tuple[str, ...]
    rel_l2: float
    l2: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "tensor": self.tensor, "node": self.node, "op": self.op,
            "weights": list(self.weights), "rel_l2": _json_float(self.rel_l2), "l2": _json_float(self.l2),
        }  # fmt: skip


def _json_float(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


@dataclass(frozen=True)
class LayerReport:
    """Outcome of :func:`compare_layers`. ``compared``: tensors matched in both graphs;
    ``first``: the first diverging tensors in topological order; ``worst``: the largest errors."""

    reference_graph: Path
    candidate_graph: Path
    reference_tensors: int
    candidate_tensors: int
    compared: int
    bound: float
    first: tuple[LayerRow, ...]
    worst: tuple[LayerRow, ...]
    diverged: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "reference_graph": str(self.reference_graph), "candidate_graph": str(self.candidate_graph),
            "reference_tensors": self.reference_tensors, "candidate_tensors": self.candidate_tensors,
            "compared": self.compared, "bound_rel_l2": self.bound, "diverged": self.diverged,
            "first": [r.as_dict() for r in self.first], "worst": [r.as_dict() for r in self.worst],
        }  # fmt: skip


def step_feeds(
    prepare_onnx: Path, cond: Conditioning, x: Any, t: float, timescale: float
) -> dict[str, np.ndarray]:
    """The step graph's inputs for one call: the (reference) prepare graph's outputs for
    ``cond`` (a :class:`~pid_trt.backends.base.Conditioning`), ``x`` and ``t`` (flow time)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(prepare_onnx), providers=["CPUExecutionProvider"])
    caption_len = sess.get_inputs()[0].shape[1]
    outs = sess.run(
        None,
        {
            "caption": cond.caption[:, :caption_len].float().contiguous().numpy(),
            "latent": cond.latent.float().contiguous().numpy(),
        },
    )
    feeds = dict(zip([o.name for o in sess.get_outputs()], outs, strict=True))
    batch = int(x.shape[0])
    feeds["x"] = x.detach().cpu().float().contiguous().numpy()
    feeds["t"] = np.full((batch,), t * timescale, dtype=np.float32)
    feeds["degrade_sigma"] = cond.degrade_sigma.detach().cpu().float().reshape(batch).numpy()
    return feeds


def _marked_runner(step_onnx: Path, out_dir: Path, name: str) -> Any:
    """An OnnxrtRunner of ``step_onnx`` with every tensor marked as an output (the modified
    graph is saved with external data, so graphs over 2 GB work too)."""
    from polygraphy import constants
    from polygraphy.backend.onnx import ModifyOutputs, OnnxFromPath, SaveOnnx
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    path = out_dir / f"{name}.onnx"
    load = OnnxFromPath(str(step_onnx), external_data_dir=str(step_onnx.parent))
    SaveOnnx(
        ModifyOutputs(load, outputs=constants.MARK_ALL), str(path), external_data_path=f"{name}.onnx.data"
    )()
    return OnnxrtRunner(SessionFromOnnx(str(path), providers=["cpu"]), name=name)


def _producers(step_onnx: Path) -> dict[str, tuple[int, str, str, tuple[str, ...]]]:
    """tensor -> (node index, node name, op type, the named weights the node reads)."""
    import onnx

    graph = onnx.load(str(step_onnx), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    out = {}
    for i, node in enumerate(graph.node):
        # module-path names (model.patch_blocks.0.attn.qkv_x.weight); folded copies are val_N / _to_copy_N
        weights = tuple(n for n in node.input if n in inits and "." in n)
        for t in node.output:
            if t:
                out[t] = (i, node.name, node.op_type, weights)
    return out


def _match(reference: Any, name: str, _index: int, iter_result: Any) -> list[str] | None:
    """Polygraphy ``find_output_func``: the candidate tensor of the same name and shape (float only)."""
    if name not in iter_result:
        return None
    ref, cand = reference[name], iter_result[name]
    if ref.shape != cand.shape or ref.dtype.kind != "f" or cand.dtype.kind != "f":
        return None
    return [name]


def compare_layers(
    reference_step: Path,
    candidate_step: Path,
    feeds: dict[str, np.ndarray],
    bound: float,
    limit: int = DEFAULT_LIMIT,
) -> LayerReport:
    """Run both step graphs on ``feeds`` with every tensor marked and compare them tensor by tensor."""
    from polygraphy.comparator import Comparator

    cmp = polygraphy_compare()
    with tempfile.TemporaryDirectory(prefix="pidtrt-layers-") as tmp, quiet():
        runners = [
            _marked_runner(Path(reference_step), Path(tmp), "reference"),
            _marked_runner(Path(candidate_step), Path(tmp), "candidate"),
        ]
        results = Comparator.run(runners, data_loader=[feeds])
        ref_out, cand_out = results["reference"][0], results["candidate"][0]
        find = functools.partial(_match, ref_out)
        accuracy = Comparator.compare_accuracy(
            results, compare_func=cmp.L2CompareFunc(l2_threshold=math.inf, find_output_func=find)
        )
    per_tensor = accuracy[0][("reference", "candidate")][0]
    producers = _producers(Path(candidate_step))
    rows = []
    for name, res in per_tensor.items():
        if name not in producers:
            continue
        norm = float(np.sqrt(np.square(ref_out[name].astype(np.float64)).sum()))
        l2 = float(res.l2_norm)
        rel = l2 / norm if norm > 0 else (0.0 if l2 == 0 else math.inf)
        index, node, op, weights = producers[name]
        rows.append(LayerRow(index, name, node, op, weights, rel, l2))
    rows.sort(key=lambda r: r.index)
    bad = [r for r in rows if not (r.rel_l2 <= bound)]  # NaN diverges too
    worst = sorted(rows, key=lambda r: -r.rel_l2 if not math.isnan(r.rel_l2) else -math.inf)
    return LayerReport(
        reference_graph=Path(reference_step),
        candidate_graph=Path(candidate_step),
        reference_tensors=len(ref_out),
        candidate_tensors=len(cand_out),
        compared=len(rows),
        bound=bound,
        first=tuple(bad[:limit]),
        worst=tuple(worst[:limit]),
        diverged=len(bad),
    )


def format_layers(report: LayerReport) -> str:
    """The report as a fixed-width text table (first diverging layers, then the worst)."""
    lines = [
        f"layers: {report.compared} tensors compared by name (reference {report.reference_tensors}, "
        f"candidate {report.candidate_tensors}); bound ||d||/||ref|| <= {report.bound:g}; "
        f"{report.diverged} diverge"
    ]
    head = f"  {'#':>5} {'node':<28} {'op':<12} {'tensor':<20} {'rel L2':>9}  weights"
    for title, rows in (("first diverging (graph order)", report.first), ("largest errors", report.worst)):
        if not rows:
            continue
        lines += [f"{title}:", head]
        for r in rows:
            w = ", ".join(r.weights) or "-"
            lines.append(
                f"  {r.index:>5} {r.node[:28]:<28} {r.op[:12]:<12} {r.tensor[:20]:<20} {r.rel_l2:>9.3g}  {w}"
            )
    return "\n".join(lines)


def worst_step_layers(
    request: PairRequest, inputs: list[VerifyInput], results: list[InputResult], timescale: float
) -> tuple[LayerReport, str]:
    """The candidate's step graph against the fp32 reference graph, layer by layer, on the step
    input (the reference's x) where the candidate's velocity PSNR is worst: (report, text).

    ``request``: the :class:`pid_trt.verify.pairs.PairRequest` of the run (an onnxruntime
    candidate); ``inputs`` / ``results``: its :class:`~pid_trt.verify.pairs.VerifyInput` list and
    the results :func:`~pid_trt.verify.pairs.run_pair` returned. Both graphs come from the export
    stores (exported first where missing: :func:`pid_trt.compile.export.ensure_export`).
    """
    from pid_trt.buckets import Bucket
    from pid_trt.compile.export import ensure_export
    from pid_trt.config import Precision
    from pid_trt.stores.keys import ExportKey
    from pid_trt.verify.bounds import LAYER_REL_L2, governing

    spec, cand = request.spec, request.candidate
    i_res, i_step = min(
        ((i, s) for i, r in enumerate(results) for s in range(len(r.steps))),
        key=lambda p: (
            results[p[0]].steps[p[1]].psnr_db if not math.isnan(results[p[0]].steps[p[1]].psnr_db) else -1
        ),
    )
    r = results[i_res]
    cond = next(inp.cond for inp in inputs if inp.name == r.name)
    bucket, batch = Bucket(cond.height, cond.width), cond.batch

    def graphs(precision: Precision, export_dir: Path):
        return ensure_export(spec, ExportKey.for_spec(spec, bucket, precision, batch), export_dir)

    ref = graphs(Precision.FP32, request.reference.export_dir)
    got = graphs(cand.precision, cand.export_dir)
    feeds = step_feeds(ref.prepare, cond, r.xs[i_step], r.ts[i_step], timescale)
    bound = LAYER_REL_L2[governing(request.reference.precision, cand.precision)]
    rep = compare_layers(ref.step, got.step, feeds, bound)
    where = f"{r.name}, step {i_step} (t={r.ts[i_step]:g}): the step with the worst velocity PSNR"
    return rep, f"{where}\n{format_layers(rep)}"
