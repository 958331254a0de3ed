"""What is inside one engine of the store: layers by precision, attention, I/O tensors, targets.

First choice: TensorRT's engine inspector (``create_engine_inspector`` /
``get_engine_information(LayerInformationFormat.JSON)``) on the deserialised plan. Deserialising
needs a CUDA GPU, TensorRT-RTX included: without one the runtime refuses the plan (CUDA driver
error), and the facts come from what the build left behind instead:

- the manifest (key: flavour, version, targets, precision, bucket; build: attention layers);
- the network TensorRT parses from the very ONNX graph the engine was built from (found in
  the export store by the manifest's ``export_digest``, its sha256 checked against the
  engine key's ``onnx_sha256``). Networks are strongly typed, so each layer's output type in
  the parsed network is the type the builder must keep; fusion is not visible there.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pid_trt.errors import StoreError
from pid_trt.stores.exports import export_store, graph_sha256
from pid_trt.stores.store import EngineStore
from pid_trt.trt_flavour import Flavour, TrtLogger, cuda_device_count, load_trt, network_flags


@dataclass(frozen=True)
class TensorInfo:
    """One I/O tensor: ``mode`` input / output, shape (-1 = dynamic), dtype name."""

    name: str
    mode: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class EngineInfo:
    """Facts about one plan. ``source`` says where the layer facts come from; ``note`` (one
    line) why the engine inspector was not used, or None when it was."""

    plan: Path
    manifest: dict[str, Any]
    source: str
    note: str | None = None
    io: list[TensorInfo] = field(default_factory=list)
    layers: int | None = None
    by_precision: dict[str, int] = field(default_factory=dict)
    by_type: dict[str, int] = field(default_factory=dict)
    compute: dict[str, dict[str, int]] = field(default_factory=dict)
    attention: list[str] = field(default_factory=list)
    attention_summary: str = ""

    @property
    def targets(self) -> list[str]:
        return list(self.manifest.get("key", {}).get("compute_capabilities") or [])

    def as_dict(self) -> dict[str, Any]:
        return {
            "plan": str(self.plan), "source": self.source, "note": self.note, "layers": self.layers,
            "layers_by_precision": self.by_precision, "layers_by_type": self.by_type,
            "compute_layers_by_precision": self.compute,
            "attention": {"summary": self.attention_summary, "layers": self.attention},
            "io": [vars(t) | {"shape": list(t.shape)} for t in self.io], "targets": self.targets,
            "manifest": self.manifest,
        }  # fmt: skip


def locate(engine: str, engine_dir: Path) -> tuple[Path, dict[str, Any]]:
    """A plan and its manifest from a path to a ``.plan`` or an id (6+ hex digits of its digest
    in ``engine_dir``). Raises StoreError when there is none or several."""
    path = Path(engine)
    if path.suffix == ".plan" or path.is_file():
        manifest_path = Path(f"{path}.manifest.json")
        if not path.is_file():
            raise StoreError(f"engine {path}: file not found")
        if not manifest_path.is_file():
            raise StoreError(
                f"engine {path}: no manifest beside it ({manifest_path.name}); not a store engine"
            )
        return path, json.loads(manifest_path.read_text())
    text = engine.lower()
    if len(text) < 6 or any(c not in "0123456789abcdef" for c in text):
        raise StoreError(
            f"engine {engine!r}: expected a .plan path or 6+ hex digits of an id (pidtrt engines list)"
        )
    found = [e for e in EngineStore(engine_dir).list() if e.digest.startswith(text)]
    if len(found) != 1:
        raise StoreError(
            f"engine id {engine!r}: {'no' if not found else len(found)} engines match in {engine_dir}"
        )
    if found[0].problem:
        raise StoreError(f"engine {found[0].path.name}: {found[0].problem}")
    return found[0].path, found[0].manifest


#: Layer types whose precision is the engine's arithmetic (the rest move or reshape data).
COMPUTE_TYPES = ("MATRIX_MULTIPLY", "CONVOLUTION", "ATTENTION_OUTPUT", "NORMALIZATION", "REDUCE", "SOFTMAX")


def _is_attention(name: str, kind: str) -> bool:
    text = f"{name} {kind}".lower()
    return "attention" in text or "mha" in text


def _from_inspector(trt: Any, plan: Path, info: EngineInfo) -> bool:
    """Fill ``info`` from the engine inspector; False (and ``info.note``) when the plan cannot be
    deserialised here."""
    logger = TrtLogger(trt)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    if engine is None:
        why = " ".join(logger.errors[0].split()) if logger.errors else "deserialize_cuda_engine returned None"
        cuda = re.search(r"cudaError \d+: [^)]*", why)
        why = cuda.group(0) if cuda else why[:160]
        where = "without a CUDA GPU" if cuda_device_count() == 0 else "on this GPU"
        info.note = (
            f"engine inspector unavailable: {trt.__name__} cannot deserialise the plan {where} ({why})"
        )
        return False
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        info.io.append(
            TensorInfo(name, mode, tuple(engine.get_tensor_shape(name)), engine.get_tensor_dtype(name).name)
        )
    data = json.loads(
        engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    )
    layers = data.get("Layers", []) if isinstance(data, dict) else []
    info.layers = len(layers)
    precisions: Counter[str] = Counter()
    types: Counter[str] = Counter()
    for layer in layers:
        if isinstance(layer, str):  # built with ProfilingVerbosity.LAYER_NAMES_ONLY (the default)
            types["(name only)"] += 1
            if _is_attention(layer, ""):
                info.attention.append(layer)
            continue
        kind = str(layer.get("LayerType", "?"))
        types[kind] += 1
        outs = layer.get("Outputs") or [{}]
        precisions[str(outs[0].get("Format/Datatype", "?"))] += 1
        if _is_attention(str(layer.get("Name", "")), kind):
            info.attention.append(str(layer.get("Name", "")))
    info.by_precision, info.by_type = dict(precisions), dict(types)
    if types.get("(name only)"):
        info.note = (
            "layer precisions need a build with ProfilingVerbosity.DETAILED; this plan lists layer names only"
        )
    return True


def _export_graph(manifest: dict[str, Any], export_dir: Path) -> tuple[Path | None, str]:
    """The ONNX graph the engine was built from, or (None, why not)."""
    build, key = manifest.get("build", {}), manifest.get("key", {})
    digest, graph = build.get("export_digest"), build.get("graph")
    if not digest or not graph:
        return None, "the manifest names no export_digest / graph"
    for entry in export_store(export_dir).list():
        if entry.digest == digest and not entry.problem:
            onnx = entry.path / f"{graph}.onnx"
            try:
                same = graph_sha256(entry.manifest, graph) == key.get("onnx_sha256")
            except StoreError:
                same = False
            if not same:
                return None, f"export {entry.path.name} no longer matches the engine's onnx_sha256"
            return onnx, ""
    return None, f"its export ({digest[:12]}) is not in {export_dir}"


def _from_network(trt: Any, onnx: Path, flavour: Flavour, info: EngineInfo) -> None:
    """Fill ``info`` from the network TensorRT parses out of ``onnx`` (strongly typed)."""
    logger = TrtLogger(trt)
    network = trt.Builder(logger).create_network(network_flags(trt, flavour))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        info.note = (info.note or "") + f"; {onnx.name} did not parse here"
        return
    for tensors, mode in (
        ([network.get_input(i) for i in range(network.num_inputs)], "input"),
        ([network.get_output(i) for i in range(network.num_outputs)], "output"),
    ):
        info.io += [TensorInfo(t.name, mode, tuple(t.shape), t.dtype.name) for t in tensors]
    precisions: Counter[str] = Counter()
    types: Counter[str] = Counter()
    compute: dict[str, Counter[str]] = {}
    attention_kind = getattr(trt.LayerType, "ATTENTION_INPUT", None)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        types[layer.type.name] += 1
        if layer.num_outputs:
            dtype = layer.get_output(0).dtype.name
            precisions[dtype] += 1
            if layer.type.name in COMPUTE_TYPES:
                compute.setdefault(layer.type.name, Counter())[dtype] += 1
        if attention_kind is not None and layer.type == attention_kind:
            info.attention.append(layer.name)
    info.layers = network.num_layers
    info.by_precision, info.by_type = dict(precisions), dict(types)
    info.compute = {k: dict(v) for k, v in compute.items()}


def inspect_engine(plan: Path, manifest: dict[str, Any], export_dir: Path) -> EngineInfo:
    """Everything :mod:`pid_trt.cli.engines` ``show`` prints about one plan."""
    key, build = manifest.get("key", {}), manifest.get("build", {})
    flavour = Flavour(key.get("flavour", "tensorrt-rtx"))
    trt = load_trt(flavour)
    info = EngineInfo(plan=plan, manifest=manifest, source="engine inspector")
    if not _from_inspector(trt, plan, info):
        onnx, why = _export_graph(manifest, export_dir)
        if onnx is not None:
            info.source = f"network parsed from {onnx.parent.name}/{onnx.name} (the graph it was built from)"
            _from_network(trt, onnx, flavour, info)
        else:
            info.source = "manifest only"
            info.note = f"{info.note}; no graph to parse: {why}"
    n = build.get("attention_layers")
    decomposable = (key.get("build_options") or {}).get("decomposable_attention")
    if n is not None:
        how = (
            "the builder may have decomposed them (decomposable_attention=true)"
            if decomposable
            else "all fused: the build refuses unfused attention (decomposable_attention=false)"
        )
        info.attention_summary = f"{n} attention layer(s) at build time; {how}"
    return info


def format_info(info: EngineInfo) -> str:
    """Plain-text report of :func:`inspect_engine`."""
    key, build = info.manifest.get("key", {}), info.manifest.get("build", {})
    size = info.plan.stat().st_size / 2**20 if info.plan.is_file() else 0.0
    lines = [
        f"engine: {info.plan} ({size:,.1f} MiB, graph {build.get('graph', '?')})",
        f"flavour: {key.get('flavour', '?')} {key.get('trt_version', '?')}; "
        f"target compute capabilities: {', '.join(info.targets) or '?'}",
        f"bucket: {key.get('width', '?')}x{key.get('height', '?')}, batch {key.get('batch_range', '?')}, "
        f"precision {key.get('precision', '?')}",
    ]
    if info.note:
        lines.append(f"note: {info.note}")
    lines.append(f"layers ({info.source}): {info.layers if info.layers is not None else '?'}")
    if info.by_precision:
        lines.append(
            "  by output type: " + ", ".join(f"{k} {v}" for k, v in sorted(info.by_precision.items()))
        )
    if info.compute:
        parts = [
            f"{kind} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
            for kind, c in sorted(info.compute.items())
        ]
        lines.append("  compute layers by output type: " + "; ".join(parts))
    if info.by_type:
        top = sorted(info.by_type.items(), key=lambda kv: -kv[1])
        lines.append("  by layer type: " + ", ".join(f"{k} {v}" for k, v in top))
    att = info.attention_summary or "no attention facts recorded"
    lines.append(f"attention: {att}")
    if info.attention:
        lines.append("  " + ", ".join(info.attention[:16]) + (" ..." if len(info.attention) > 16 else ""))
    if info.io:
        lines.append("I/O tensors:")
        lines += [f"  {t.mode:<6} {t.name:<16} {list(t.shape)!s:<22} {t.dtype}" for t in info.io]
    lines.append("manifest:")
    lines += ["  " + line for line in json.dumps(info.manifest, indent=2, sort_keys=True).splitlines()]
    return "\n".join(lines)
