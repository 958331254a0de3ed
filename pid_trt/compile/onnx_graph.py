"""Checks and clean-up of exported ONNX graphs (no model weights are ever loaded here).

- :func:`optimise`: the exporter's constant folding and dead-code removal, without its
  pattern rewriter (which costs most of the export time and adds nothing TensorRT needs).
  Folding turns shape sub-graphs into constants, so every reduce op gets constant axes
  (docs/design.md §8: TensorRT-RTX's parser refuses the rest).
- :func:`inspect_graph`: a :class:`GraphReport` (op counts, float64 tensors, largest
  initializer, attention form, dtypes of the fp32-island ops) from the graph file alone.
- :func:`trt_parse`: parse a graph (by path, so external data resolves) with the installed
  TensorRT(-RTX) ONNX parser.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pid_trt.errors import BackendUnavailableError, EngineBuildError

#: Largest tensor (elements) that constant folding may read or write; shape arithmetic only.
FOLD_INPUT_LIMIT = 8192
FOLD_OUTPUT_LIMIT = 1 << 20

#: Ops whose output must stay float32 in every precision (docs/design.md §5, fp32 islands):
#: timestep sinusoid and position tables (Sin, Cos), norm statistics (ReduceMean,
#: RMSNormalization, GroupNormalization, Sqrt, Reciprocal), gates (Sigmoid), Exp (log_alpha).
FP32_ISLAND_OPS = frozenset(
    {
        "Sin",
        "Cos",
        "ReduceMean",
        "RMSNormalization",
        "GroupNormalization",
        "Sqrt",
        "Reciprocal",
        "Sigmoid",
        "Exp",
    }
)


class AttentionForm(str, Enum):
    """How attention appears in a graph."""

    FUSED = "Attention"  # ONNX opset-23 Attention node (TensorRT >= 10.14 / RTX: fused MHA)
    UNFUSED = "MatMul-Softmax-MatMul"
    NONE = "none"


@dataclass(frozen=True)
class GraphReport:
    """What :func:`inspect_graph` found in one ONNX file.

    ops: op type -> count. float64: names of float64 tensors / casts (must be empty).
    largest_initializer: (name, bytes). attention: :class:`AttentionForm`; attention_nodes: count.
    island_dtypes: op type -> sorted element-type names of its outputs, for
    :data:`FP32_ISLAND_OPS` present. weight_dtypes: element type name -> initializer count.
    """

    ops: dict[str, int]
    float64: tuple[str, ...]
    largest_initializer: tuple[str, int]
    attention: AttentionForm
    attention_nodes: int
    island_dtypes: dict[str, tuple[str, ...]]
    weight_dtypes: dict[str, int]

    def non_fp32_islands(self) -> dict[str, tuple[str, ...]]:
        """Island ops with any output that is not float32 (must be empty)."""
        return {op: dts for op, dts in self.island_dtypes.items() if dts != ("FLOAT",)}


def optimise(model: Any, keep: set[str] | None = None) -> None:
    """Fold constants and drop dead nodes of an ``onnx_ir.Model`` in place (see module doc).

    ``keep``: initializer names (the model's parameters) left untouched: not folded into
    derived constants, not deduplicated, so each stays one named initializer (what refitting
    by name needs); the casts / transposes applied to them stay as graph nodes, which
    TensorRT folds at build time and replays at refit. Kept ones that end up unused are dropped.
    """
    import onnx_ir as ir
    from onnx_ir.passes import common
    from onnxscript.optimizer import _constant_folding

    graph = model.graph
    held = []
    for name in sorted(set(graph.initializers) & set(keep or ())):
        value = graph.initializers.pop(name)
        held.append((value, value.const_value))
        value.const_value = None  # looks like a graph input to the folder: never folded
        graph.inputs.append(value)

    fold = _constant_folding.FoldConstantsPass(
        shape_inference=True, input_size_limit=FOLD_INPUT_LIMIT, output_size_limit=FOLD_OUTPUT_LIMIT
    )
    ir.passes.Sequential(
        common.InlinePass(),
        fold,
        common.RemoveUnusedNodesPass(),
        fold,
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.NameFixPass(),
    )(model)
    for value, const in held:
        graph.inputs.remove(value)
        value.const_value = const
        if value.uses():
            graph.register_initializer(value)


def _elem_name(elem_type: int) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(elem_type)


def inspect_graph(path: str | Path) -> GraphReport:
    """Inspect ``path`` (external data is not read): see :class:`GraphReport`."""
    import numpy as np
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=False)
    graph = inferred.graph
    double = onnx.TensorProto.DOUBLE
    types: dict[str, int] = {}
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        types[vi.name] = vi.type.tensor_type.elem_type
    f64: list[str] = []
    largest = ("", 0)
    weight_dtypes: Counter[str] = Counter()
    for init in graph.initializer:
        types[init.name] = init.data_type
        weight_dtypes[_elem_name(init.data_type)] += 1
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        size = int(np.prod(init.dims, dtype=np.int64)) * itemsize
        if size > largest[1]:
            largest = (init.name, size)
    f64 += [name for name, t in types.items() if t == double]
    ops: Counter[str] = Counter()
    islands: dict[str, set[str]] = {}
    for node in graph.node:
        ops[node.op_type] += 1
        for attr in node.attribute:
            if attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i == double:
                f64.append(f"{node.op_type}:{node.name}")
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == double:
                f64.append(f"{node.op_type}:{node.name}")
        if node.op_type in FP32_ISLAND_OPS and node.output and node.output[0] in types:
            islands.setdefault(node.op_type, set()).add(_elem_name(types[node.output[0]]))
    if ops.get("Attention"):
        form, count = AttentionForm.FUSED, ops["Attention"]
    elif ops.get("Softmax"):
        form, count = AttentionForm.UNFUSED, ops["Softmax"]
    else:
        form, count = AttentionForm.NONE, 0
    return GraphReport(
        ops=dict(ops),
        float64=tuple(sorted(set(f64))),
        largest_initializer=largest,
        attention=form,
        attention_nodes=count,
        island_dtypes={k: tuple(sorted(v)) for k, v in sorted(islands.items())},
        weight_dtypes=dict(weight_dtypes),
    )


def structure_sha256(path: str | Path) -> str:
    """sha256 of a graph without its weight values: nodes, inputs, outputs and every
    initializer's name, type and shape (external data is not read). Two exports of one net
    config, precision and range with different weights hash the same when their parameters were
    kept as named initializers (``optimise(keep=...)``)."""
    import hashlib

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for init in model.graph.initializer:
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            init.ClearField(field)
        init.ClearField("external_data")
        init.ClearField("data_location")
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def graph_weights(path: str | Path, names: set[str]) -> list[list[Any]]:
    """[name, ONNX type name, shape] of every initializer named in ``names`` (the parameters
    of a refittable graph), sorted by name; external data is not read."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sorted(
        [init.name, _elem_name(init.data_type), [int(d) for d in init.dims]]
        for init in model.graph.initializer
        if init.name in names
    )


def check_model_by_path(path: str | Path) -> None:
    """``onnx.checker`` by path (works past 2 GB with external data); raises
    :class:`EngineBuildError` with the checker's first line when the graph is invalid."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as exc:
        first = (str(exc).strip().splitlines() or ["no detail"])[0]
        raise EngineBuildError(f"onnx.checker rejects {Path(path).name}: {first}") from None


@dataclass(frozen=True)
class ParseReport:
    """Outcome of :func:`trt_parse`: the parser's module name, layer count and fused-attention
    layers (TensorRT's ``ATTENTION_INPUT`` layers; 0 where the API has none)."""

    module: str
    layers: int
    attention_layers: int


def trt_parse(path: str | Path) -> ParseReport:
    """Parse ``path`` with TensorRT-RTX's (else TensorRT's) ONNX parser via ``parse_from_file``.

    Raises :class:`BackendUnavailableError` when neither is installed and
    :class:`EngineBuildError` with the parser's first errors when parsing fails.
    """
    from pid_trt.trt_flavour import Flavour, load_trt

    try:
        trt = load_trt(Flavour.TENSORRT_RTX)
    except BackendUnavailableError:
        trt = load_trt(Flavour.TENSORRT)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(
            str(parser.get_error(i)).strip().replace("\n", " ") for i in range(min(parser.num_errors, 3))
        )
        raise EngineBuildError(f"{trt.__name__} cannot parse {Path(path).name}: {errors or 'no detail'}")
    kind = getattr(trt.LayerType, "ATTENTION_INPUT", None)
    attn = sum(1 for i in range(network.num_layers) if kind is not None and network.get_layer(i).type == kind)
    return ParseReport(module=trt.__name__, layers=network.num_layers, attention_layers=attn)
