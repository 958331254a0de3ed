"""torch -> ONNX per (net config, weights, bucket, precision, batch): two graphs per export.

``prepare.onnx`` -- run once per decode::

    caption [B, T, D_txt] f32, latent [B, C, h, w] f32
      -> y_emb [B, T, D] f32, lq_feats [B, K, L, D] f32 (, pit_feat [B, L, D] f32 for v1.5)

``step.onnx`` -- run once per sampler step::

    x [B, 3, H, W] f32, t [B] f32 (x1000), y_emb, lq_feats, degrade_sigma [B] f32 (, pit_feat)
      -> velocity [B, 3, H, W] f32

Shapes are all static: T = txt_max_length; (H, W) the bucket; (h, w) = ceil(H / px, W / px)
with px = pixels per latent cell (the latent adapter's nearest resize maps any latent grid
onto the patch grid; e.g. 3840x2160 on flux (32 px per cell) takes a 68x120 latent).
**The batch is static too** (it is part of the key): the dynamo exporter handles a
symbolic batch without specialising, but its symbolic-shape tracing makes the export about
3x slower, and one engine per (bucket, batch) is what the engine store keys anyway.

Precision: fp16/bf16 graphs carry fp16/bf16 weights and run matmuls, convolutions and
attention in that type; graph inputs and outputs stay float32 at every precision, and the
fp32 islands of :mod:`pid_trt.model.layers` (norms, timestep sinusoid, RoPE, gates, pixel
position table, final layer) are explicit Casts to float32 in the graph.

Attention is the ONNX opset-23 ``Attention`` op (what ``F.scaled_dot_product_attention``
exports to at opset >= 23); ONNX Runtime's CPU provider runs it and TensorRT(-RTX) parses it
into a fused attention layer. Weights always go to an external data file beside each graph.

Exports land in the export store (:mod:`pid_trt.stores.exports`, ``export/`` by default),
keyed by :class:`~pid_trt.stores.keys.ExportKey`; :func:`ensure_export` is the one way to get
the export of a net, size, precision and batch: from the store, or exported now.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pid_trt.buckets import Bucket, ShapeRange, latent_shape
from pid_trt.compile.trace import PrepareGraph, StepGraph, export_module
from pid_trt.config import NetConfig, Precision
from pid_trt.errors import ConfigError
from pid_trt.resources import peak_rss_bytes
from pid_trt.stores.artifacts import canonical_json, hash_artifact
from pid_trt.stores.exports import (
    DEFAULT_EXPORT_DIR,
    PREPARE_FILE,
    STEP_FILE,
    ExportResult,
    export_store,
    find_export,
)
from pid_trt.stores.keys import DEFAULT_OPSET, ExportKey

if TYPE_CHECKING:
    from pid_trt.netspec import NetSpec

#: Stage lines ("export: step graph", "fp8: calibrating ...") at INFO; the CLI shows them.
log = logging.getLogger("pid_trt.compile.export")

_DTYPES = {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}
#: Base precision of fp8 graphs: the layers left unquantized, the activations between the
#: FP8 GEMMs and attention run in bf16 (TensorRT fuses attention only in fp16/bf16), and the
#: prepare graph is the bf16 one. Calibration still runs on the fp32 model.
FP8_BASE = Precision.BF16


def graph_io_names(config: NetConfig, dynamic: bool = False) -> dict[str, tuple[list[str], list[str]]]:
    """Input and output names of both graphs: {"prepare": (ins, outs), "step": (ins, outs)}.
    ``dynamic``: the prepare graph also takes ``grid`` (:mod:`pid_trt.compile.dynamic`)."""
    prep_out = ["y_emb", "lq_feats"] + (["pit_feat"] if config.pit_lq_inject else [])
    if dynamic:
        from pid_trt.compile.dynamic import GRID_INPUT

        return {
            "prepare": (["caption", "latent", GRID_INPUT], prep_out),
            "step": graph_io_names(config)["step"],
        }
    step_in = ["x", "t", "y_emb", "lq_feats", "degrade_sigma"] + (
        ["pit_feat"] if config.pit_lq_inject else []
    )
    return {"prepare": (["caption", "latent"], prep_out), "step": (step_in, ["velocity"])}


def export_graphs(
    model: nn.Module,
    bucket: Bucket,
    precision: Precision | str,
    batch: int,
    out_dir: Path,
    opset: int = DEFAULT_OPSET,
    shape_range: ShapeRange | None = None,
    refittable: bool = False,
) -> dict[str, Any]:
    """Write ``prepare.onnx`` and ``step.onnx`` (+ ``.data``) of ``model`` (fp32, not modified)
    into ``out_dir``. Returns facts for the manifest (seconds, peak RSS, graph reports).
    ``shape_range``: one pair of dynamic-shape graphs for that range
    (:mod:`pid_trt.compile.dynamic`); ``refittable``: parameters stay named initializers."""
    precision = Precision(precision)
    config: NetConfig = model.config
    start = time.perf_counter()
    base = FP8_BASE if precision is Precision.FP8 else precision
    net = model if base is Precision.FP32 else copy.deepcopy(model).to(_DTYPES[base])
    net = net.eval()
    params = _params(net, refittable)
    if shape_range is not None:
        _export_dynamic(net, config, shape_range, out_dir, opset, refittable)
        return _export_facts(out_dir, start, latent_shape(config, shape_range.opt_bucket), params)
    lh, lw = latent_shape(config, bucket)
    gen = torch.Generator().manual_seed(0)
    caption = torch.randn(batch, config.txt_max_length, config.txt_embed_dim, generator=gen)
    latent = torch.randn(batch, config.lq_latent_channels, lh, lw, generator=gen)
    # Example step inputs: Prepared is float32 at every precision, so the fp32 model gives the
    # same shapes and dtypes, and fast (eager bf16/fp16 convolutions on a CPU are ~10x slower).
    with torch.no_grad():
        prepared = model.eval().prepare(caption, latent, bucket.height, bucket.width)
    x = torch.randn(batch, config.in_channels, bucket.height, bucket.width, generator=gen)
    t = torch.full((batch,), 866.0)
    sigma = torch.full((batch,), 0.1)
    step_args = (x, t, prepared.y_emb, prepared.lq_feats, sigma)
    if prepared.pit_feat is not None:
        step_args += (prepared.pit_feat,)
    del prepared
    names = graph_io_names(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("export: prepare graph (%s, %s)", bucket.name, base.value)
    export_module(
        PrepareGraph(net, bucket.height, bucket.width),
        (caption, latent),
        names["prepare"],
        out_dir / PREPARE_FILE,
        opset,
        keep_parameters=refittable,
    )
    if precision is Precision.FP8:  # ModelOpt PTQ (calibration at the bucket, capped at 512 px) + Q/DQ
        from pid_trt.compile.export_fp8 import export_fp8_step
        from pid_trt.compile.quantize import calibration_for_bucket

        del net  # the bf16 copy served the prepare graph; quantization makes its own copy
        calib = calibration_for_bucket(config, bucket.height, bucket.width, batch)
        log.info(
            "fp8: calibrating on %d fp32 decodes at %dx%d, quantizing, then exporting the step graph",
            calib.num_samples, calib.width, calib.height,
        )  # fmt: skip
        export_fp8_step(
            model, step_args, names["step"], out_dir / STEP_FILE, opset, calib, base=_DTYPES[base]
        )
    else:
        log.info("export: step graph (%s, %s)", bucket.name, base.value)
        export_module(
            StepGraph(net), step_args, names["step"], out_dir / STEP_FILE, opset, keep_parameters=refittable
        )
    return _export_facts(out_dir, start, (lh, lw), params)


def _params(net: nn.Module | None, refittable: bool) -> set[str] | None:
    """Initializer names of ``net``'s parameters in a refittable graph, else None."""
    if not refittable or net is None:
        return None
    from pid_trt.compile.refit import PARAMETER_PREFIX

    return {PARAMETER_PREFIX + name for name, _ in net.named_parameters()}


def _export_dynamic(
    net: nn.Module,
    config: NetConfig,
    shape_range: ShapeRange,
    out_dir: Path,
    opset: int,
    refittable: bool,
) -> None:
    """Both graphs with symbolic batch and size (:mod:`pid_trt.compile.dynamic`)."""
    from pid_trt.compile.dynamic import DynamicPrepareGraph, dynamic_shapes, trace_inputs

    inputs, dims = trace_inputs(config, shape_range), dynamic_shapes(config, shape_range)
    names = graph_io_names(config, dynamic=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("export: dynamic prepare graph (%s)", shape_range.name)
    export_module(
        DynamicPrepareGraph(net), tuple(inputs["prepare"].values()), names["prepare"], out_dir / PREPARE_FILE,
        opset, dynamic_shapes=dims["prepare"], keep_parameters=refittable,
    )  # fmt: skip
    log.info("export: dynamic step graph (%s)", shape_range.name)
    export_module(
        StepGraph(net), tuple(inputs["step"].values()), names["step"], out_dir / STEP_FILE, opset,
        dynamic_shapes=dims["step"], keep_parameters=refittable,
    )  # fmt: skip


def _export_facts(
    out_dir: Path, start: float, latent_hw: tuple[int, int], params: set[str] | None
) -> dict[str, Any]:
    """Manifest facts of the graphs written to ``out_dir``; ``params``: the parameter
    initializer names of a refittable export (their list goes into the manifest)."""
    from pid_trt.compile.onnx_graph import graph_weights, inspect_graph, structure_sha256

    files = {}
    for p in sorted(out_dir.iterdir()):
        sha, size = hash_artifact(p)
        files[p.name] = {"sha256": sha, "bytes": size}
    graphs = {}
    for name in (PREPARE_FILE, STEP_FILE):
        rep = inspect_graph(out_dir / name)
        graphs[name] = {
            "attention": rep.attention.value,
            "attention_nodes": rep.attention_nodes,
            "largest_initializer_bytes": rep.largest_initializer[1],
            "nodes": sum(rep.ops.values()),
            "float64": len(rep.float64),
            "structure_sha256": structure_sha256(out_dir / name),
        }
        if params is not None:  # what a weightless engine of this graph must be refitted with
            graphs[name]["weights"] = graph_weights(out_dir / name, params)
    return {
        "files": files,
        "graphs": graphs,
        "export_seconds": round(time.perf_counter() - start, 3),
        "peak_rss_bytes": peak_rss_bytes(),
        "latent_hw": list(latent_hw),
    }


def export_onnx(
    model: nn.Module, key: ExportKey, export_dir: str | Path = DEFAULT_EXPORT_DIR
) -> ExportResult:
    """Return the export of ``key``, exporting ``model`` (fp32, with the key's weights) if the
    cache has none. The caller vouches that ``model`` holds ``key.weights``."""
    config = getattr(model, "config", None)
    if not isinstance(config, NetConfig) or canonical_json(config.to_json()) != canonical_json(
        key.net_config
    ):
        raise ConfigError("export: the model's net config differs from the export key's")
    if key.precision is Precision.FP8:
        from pid_trt.compile.quantize import require_modelopt

        require_modelopt()  # before any work, not after the prepare graph

    def build(tmp: Path) -> dict[str, Any]:
        return export_graphs(
            model, key.bucket, key.precision, key.batch, tmp, key.opset, key.shape_range, key.refittable
        )

    res = export_store(export_dir).put(key, build, verify_hash=False)
    return ExportResult.at(res.path, res.manifest, res.built, key)


def ensure_export(
    spec: NetSpec,
    key: ExportKey,
    export_dir: str | Path = DEFAULT_EXPORT_DIR,
    *,
    load_model: Callable[[], nn.Module] | None = None,
    on_export: Callable[[ExportKey], None] | None = None,
) -> ExportResult:
    """The export of ``key`` (:meth:`ExportKey.for_spec` of ``spec``, a
    :class:`pid_trt.netspec.NetSpec`) from the store at ``export_dir``, or, when the store has
    none, exported now (``result.built`` is then True).

    Before exporting: fp8 checks that ModelOpt is installed, then ``on_export(key)`` is told
    (a log line, a message), then ``load_model()`` gives the fp32 model with the spec's
    weights (default :func:`pid_trt.netspec.build_model`). Raises StoreError for a stale or
    corrupt export in the store.
    """
    found = find_export(key, export_dir)
    if found is not None:
        return found
    if key.precision is Precision.FP8:
        from pid_trt.compile.quantize import require_modelopt

        require_modelopt()  # before the model is built
    if on_export is not None:
        on_export(key)
    if load_model is None:
        from pid_trt.netspec import build_model

        return export_onnx(build_model(spec), key, export_dir)
    return export_onnx(load_model(), key, export_dir)
