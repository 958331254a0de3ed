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

Exports land in an :class:`~pid_trt.stores.artifacts.ArtifactStore` of kind ``onnx`` (``export/`` by
default): a folder ``<label>-<digest16>/`` holding both graphs and their data, and a sibling
``<folder>.manifest.json`` with the full :class:`ExportKey`, per-file sha256 and graph facts.
A cached export is reused only when its manifest matches the key.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from pid_trt.buckets import Bucket
from pid_trt.compile.dynamic import ShapeRange
from pid_trt.compile.trace import PrepareGraph, StepGraph, export_module
from pid_trt.config import NetConfig, Precision
from pid_trt.errors import ConfigError
from pid_trt.stores.artifacts import ArtifactStore, canonical_json, hash_artifact, key_digest

#: Stage lines ("export: step graph", "fp8: calibrating ...") at INFO; the CLI shows them.
log = logging.getLogger("pid_trt.compile.export")

DEFAULT_EXPORT_DIR = Path("export")
DEFAULT_OPSET = 23
#: Bumped whenever the graphs this module writes change for the same key (2: FP8 step graphs
#: on a bf16 base), so that older exports no longer match.
EXPORTER_REVISION = 2
PREPARE_FILE = "prepare.onnx"
STEP_FILE = "step.onnx"
_DTYPES = {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}
#: Base precision of fp8 graphs: the layers left unquantized, the activations between the
#: FP8 GEMMs and attention run in bf16 (TensorRT fuses attention only in fp16/bf16), and the
#: prepare graph is the bf16 one. Calibration still runs on the fp32 model.
FP8_BASE = Precision.BF16


def latent_shape(config: NetConfig, bucket: Bucket) -> tuple[int, int]:
    """Latent cells (h, w) of a bucket: ceil(H / px), ceil(W / px), px = pixels per cell."""
    px = config.pixels_per_latent
    return math.ceil(bucket.height / px), math.ceil(bucket.width / px)


def weights_id(checkpoint_sha256: str | None = None, random_seed: int | None = None) -> str:
    """Key text of the weights: a checkpoint's sha256 (hex) or ``random:<seed>``."""
    if (checkpoint_sha256 is None) == (random_seed is None):
        raise ConfigError("weights: give exactly one of a checkpoint sha256 or a random seed")
    if random_seed is not None:
        return f"random:{int(random_seed)}"
    sha = checkpoint_sha256.lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ConfigError(f"checkpoint sha256 {checkpoint_sha256!r}: expected 64 hex digits")
    return sha


def spec_weights_id(spec: Any) -> str:
    """:func:`weights_id` of a :class:`pid_trt.netspec.NetSpec` (hashes the checkpoint file)."""
    if spec.random_weights:
        return weights_id(random_seed=spec.weights_seed)
    from pid_trt.checkpoints import file_sha256

    return weights_id(checkpoint_sha256=file_sha256(spec.checkpoint))


def _versions() -> dict[str, str]:
    import onnx
    import onnxscript

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__}


@dataclass(frozen=True)
class ExportKey:
    """Everything that invalidates an export. height/width: output pixels; batch: B."""

    kind: ClassVar[str] = "onnx"
    suffix: ClassVar[str] = ""

    net_config: str
    weights: str
    height: int
    width: int
    batch: int
    precision: Precision
    opset: int
    versions: tuple[tuple[str, str], ...]
    shape_range: ShapeRange | None = None
    refittable: bool = False

    @classmethod
    def create(
        cls, config: NetConfig, weights: str, bucket: Bucket, precision: Precision | str, batch: int,
        opset: int = DEFAULT_OPSET, shape_range: ShapeRange | None = None, refittable: bool = False,
    ) -> ExportKey:  # fmt: skip
        """The key of exporting ``config`` with ``weights`` (:func:`weights_id`) for one bucket,
        or, with ``shape_range``, for every size and batch of that range (``bucket`` and
        ``batch`` are then its opt values). ``refittable``: every parameter stays one
        initializer named by its checkpoint key (for weightless engines refitted by name)."""
        if shape_range is not None:
            bucket, batch = shape_range.opt_bucket, shape_range.batch[1]
            if Precision(precision) is Precision.FP8:
                raise ConfigError(
                    "dynamic-shape export of fp8 graphs is not supported: build static fp8 engines (--size WxH)"
                )
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"batch {batch!r}: expected an integer >= 1")
        if opset < 23:
            raise ConfigError(
                f"opset {opset}: expected >= 23 (attention exports as the fused Attention op from 23)"
            )
        try:
            precision = Precision(precision)
        except ValueError:
            raise ConfigError(f"precision {precision!r}: expected fp32, fp16, bf16 or fp8") from None
        if precision not in _DTYPES and precision is not Precision.FP8:
            raise ConfigError(f"precision {precision.value}: ONNX export supports fp32, fp16, bf16 or fp8")
        hs, ws = bucket.height // config.patch_size, bucket.width // config.patch_size
        if hs * config.patch_size != bucket.height or ws * config.patch_size != bucket.width:
            raise ConfigError(f"bucket {bucket.name}: expected multiples of patch_size {config.patch_size}")
        if refittable and precision is Precision.FP8:
            raise ConfigError(
                "refittable (weightless) fp8 graphs are not supported: FP8 scales are calibrated per "
                "checkpoint, so an fp8 plan is built per checkpoint (see README, 'Weightless plans')"
            )
        return cls(config.to_json(), weights, bucket.height, bucket.width, batch, precision, opset,
                   tuple(sorted(_versions().items())), shape_range, bool(refittable))  # fmt: skip

    @property
    def bucket(self) -> Bucket:
        return Bucket(height=self.height, width=self.width)

    @property
    def config(self) -> NetConfig:
        return NetConfig.from_json(self.net_config)

    def fields(self) -> dict[str, Any]:
        import json

        lh, lw = latent_shape(self.config, self.bucket)
        extra: dict[str, Any] = {}
        if self.shape_range is not None:  # absent for static exports: their digests are unchanged
            extra["range"] = self.shape_range.fields()
        if self.refittable:
            extra["refittable"] = True
        return {
            **extra,
            "net_config": json.loads(self.net_config),
            "weights": self.weights,
            "height": self.height,
            "width": self.width,
            "latent_hw": [lh, lw],
            "batch": self.batch,
            "precision": self.precision.value,
            "opset": self.opset,
            "versions": dict(self.versions),
            "exporter_revision": EXPORTER_REVISION,
        }

    def digest(self) -> str:
        return key_digest(self)

    def label(self) -> str:
        """e.g. ``2048x2048-b1-bf16-op23-w3f9a2c-n1a2b``."""
        w = "r" + self.weights.split(":", 1)[1] if self.weights.startswith("random:") else self.weights[:6]
        net = hashlib.sha256(self.net_config.encode()).hexdigest()[:4]
        size = f"{self.width}x{self.height}-b{self.batch}"
        if self.shape_range is not None:
            size = self.shape_range.label()
        refit = "-rf" if self.refittable else ""
        return f"{size}-{self.precision.value}-op{self.opset}{refit}-w{w}-n{net}"


@dataclass(frozen=True)
class ExportResult:
    """A ready export: ``folder`` holds ``prepare`` and ``step`` (paths of the two graphs);
    ``built`` is False when the cache served it; ``manifest`` as stored."""

    folder: Path
    prepare: Path
    step: Path
    manifest: dict[str, Any]
    built: bool
    key: ExportKey

    @property
    def size_bytes(self) -> int:
        return int(self.manifest.get("size_bytes", 0))


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


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes (Linux: ru_maxrss is KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def export_store(export_dir: str | Path = DEFAULT_EXPORT_DIR) -> ArtifactStore:
    """The ONNX export cache at ``export_dir`` (kind ``onnx``)."""
    return ArtifactStore(export_dir, kind=ExportKey.kind)


def _result(path: Path, manifest: dict[str, Any], built: bool, key: ExportKey) -> ExportResult:
    return ExportResult(path, path / PREPARE_FILE, path / STEP_FILE, manifest, built, key)


def find_export(key: ExportKey, export_dir: str | Path = DEFAULT_EXPORT_DIR) -> ExportResult | None:
    """The cached export of ``key``, or None. Raises StoreError for a stale / corrupt one."""
    store = export_store(export_dir)
    path = store.lookup(key, verify_hash=False)
    if path is None:
        return None
    return _result(path, store.manifest(key) or {}, False, key)


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
    return _result(res.path, res.manifest, res.built, key)
