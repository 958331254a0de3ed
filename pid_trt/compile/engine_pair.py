"""Engine pairs: the two TensorRT engines (``prepare`` + ``step``) of one export, in the store.

:func:`build_pair` exports (reusing a matching export) and builds both graphs of one
(net config, weights, bucket, precision, batch) into the engine store: for each graph the
engine key of the build (:func:`engine_key`) and the plan, built unless the store has it
(:func:`build_into_store`). The runtime's look-up (from the store alone: no ONNX, no CUDA)
is :mod:`pid_trt.stores.select`.

Each engine's manifest ``build`` section records ``graph`` (``prepare`` or ``step``) and
``export_digest`` (the export both came from), which pair the two engines.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pid_trt.buckets import Bucket, ShapeRange
from pid_trt.compile.build import BuildOptions, BuildProgress, BuildReport, build_engine
from pid_trt.config import NetConfig, Precision
from pid_trt.errors import ConfigError, StoreError
from pid_trt.stores.artifacts import PutResult, canonical_json, hash_artifact
from pid_trt.stores.exports import GRAPHS, graph_sha256
from pid_trt.stores.keys import EngineKey, ExportKey, weights_sha256
from pid_trt.stores.store import EngineStore
from pid_trt.trt_flavour import Flavour, detect_flavour, flavour_version, normalise_targets

if TYPE_CHECKING:
    from pid_trt.netspec import NetSpec


@dataclass(frozen=True)
class GraphBuild:
    """One engine of a pair. Sizes in bytes, times in seconds (0 when reused)."""

    graph: str
    path: Path
    digest: str
    plan_bytes: int
    build_seconds: float
    built: bool
    replaced: str | None
    attention_layers: int = 0


@dataclass(frozen=True)
class PairBuild:
    """What :func:`build_pair` did: the export (and whether it was made now) and both engines."""

    export_folder: Path
    exported: bool
    export_seconds: float
    engines: tuple[GraphBuild, ...]


def build_pair(
    spec: NetSpec,
    bucket: Bucket,
    precision: Precision,
    batch: int,
    options: BuildOptions,
    *,
    engine_dir: Path,
    export_dir: Path,
    flavour: Flavour | str = "auto",
    progress: Callable[[str], BuildProgress | None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    shape_range: ShapeRange | None = None,
) -> PairBuild:
    """Export ``spec`` (a :class:`pid_trt.netspec.NetSpec`) for ``bucket`` (reusing a matching
    export) and build both graphs into the engine store at ``engine_dir``.

    ``shape_range``: one dynamic-shape pair for every size and batch of the range instead
    (``bucket`` / ``batch`` are ignored; ``options.batch_range`` must be the range's batch).
    ``options.weightless``: plans without weights, refitted at load (:mod:`pid_trt.compile.refit`);
    the export keeps the parameters as named initializers, and the plan's key is the
    architecture key, so every checkpoint of the architecture shares it.
    ``progress(graph)`` may return a :class:`BuildProgress` for that graph's build;
    ``on_phase(name)`` is told "export" / "prepare" / "step" as each phase starts.
    """
    from pid_trt.compile.export import ensure_export

    bucket, batch = _pair_size(options, bucket, batch, shape_range)
    if options.weightless:
        # before the export: refused at once where it cannot be built (no GPU, several targets)
        normalise_targets(detect_flavour(flavour), options.compute_capabilities, weightless=True)
    key = ExportKey.for_spec(
        spec, bucket, precision, batch, shape_range=shape_range, refittable=options.weightless
    )
    if on_phase:
        on_phase("export")
    start = time.perf_counter()
    export = ensure_export(spec, key, export_dir)
    export_seconds = time.perf_counter() - start
    store = EngineStore(engine_dir)
    profiles = None
    if shape_range is not None:
        from pid_trt.compile.dynamic import profile_shapes

        profiles = profile_shapes(spec.config, shape_range)
    out = []
    for graph in GRAPHS:
        if on_phase:
            on_phase(graph)
        onnx = export.prepare if graph == "prepare" else export.step
        opts, ekey, extra = _graph_plan(
            spec, export, graph, onnx, bucket, precision, options, flavour, shape_range, profiles
        )
        res = build_into_store(
            store, ekey, onnx, opts, progress=progress(graph) if progress else None, extra=extra
        )
        out.append(_graph_build(graph, ekey, res))
    return PairBuild(export.folder, export.built, export_seconds, tuple(out))


def _pair_size(
    options: BuildOptions, bucket: Bucket, batch: int, shape_range: ShapeRange | None
) -> tuple[Bucket, int]:
    """The (bucket, batch) the pair is exported at: the range's opt size and batch for a dynamic
    pair. Raises ConfigError when ``options.batch_range`` does not match the pair's batch."""
    if shape_range is not None:
        if options.batch_range != shape_range.batch:
            raise ConfigError(
                f"batch range {options.batch_range}: expected the shape range's {shape_range.batch}"
            )
        return shape_range.opt_bucket, shape_range.batch[1]
    if options.batch_range != (batch, batch, batch):
        raise ConfigError(
            f"batch range {options.batch_range}: the exporter writes static-batch graphs; "
            f"build one engine pair per batch (--batch N), or one dynamic pair (--dynamic)"
        )
    return bucket, batch


def _graph_plan(
    spec: NetSpec,
    export: Any,
    graph: str,
    onnx: Path,
    bucket: Bucket,
    precision: Precision,
    options: BuildOptions,
    flavour: Flavour | str,
    shape_range: ShapeRange | None,
    profiles: dict[str, Any] | None,
) -> tuple[BuildOptions, EngineKey, dict[str, Any]]:
    """(build options, engine key, manifest extra) of one graph of the pair."""
    ck_sha, onnx_sha, extra = _graph_identity(spec, export, graph, precision, options.weightless)
    opts = _graph_options(options, graph, profiles, extra.get("refit_weights"))
    key = engine_key(
        checkpoint_sha256=ck_sha,
        net_config=spec.config,
        height=bucket.height,
        width=bucket.width,
        onnx_path=onnx,
        options=opts,
        flavour=flavour,
        onnx_sha256=onnx_sha,
        shape_range=shape_range,
    )
    return opts, key, extra


def _graph_identity(
    spec: NetSpec, export: Any, graph: str, precision: Precision, weightless: bool
) -> tuple[str, str, dict[str, Any]]:
    """(checkpoint sha256, ONNX sha256, manifest extra) of one graph's engine: the weights' and
    the graph files' hashes, or for a weightless plan the architecture key and the graph's
    structure hash (extra then lists the ``refit_weights``)."""
    facts = graph_facts(export.manifest.get("build", {}).get("graphs", {}), graph)
    weights = export.key.weights
    extra: dict[str, Any] = {"graph": graph, "export_digest": export.key.digest(), "weights": weights}
    ck_sha, onnx_sha = weights_sha256(weights), graph_sha256(export.manifest, graph)
    if weightless:
        from pid_trt.compile.refit import architecture_key

        refit = facts.get("weights") or []
        ck_sha = architecture_key(json.loads(spec.config.to_json()), precision.value, refit)
        onnx_sha = str(facts.get("structure_sha256") or "")
        extra["refit_weights"] = refit
    return ck_sha, onnx_sha, extra


def _graph_options(
    options: BuildOptions, graph: str, profiles: dict[str, Any] | None, refit: list | None
) -> BuildOptions:
    """``options`` for one graph: its shape profile (dynamic pair), the weights to strip (weightless)."""
    if profiles is not None:
        options = dataclasses.replace(options, profile=tuple((n, *v) for n, v in profiles[graph].items()))
    if refit is not None:
        options = dataclasses.replace(options, refit_weights=tuple(n for n, _, _ in refit))
    return options


def _graph_build(graph: str, key: EngineKey, res: PutResult) -> GraphBuild:
    """What the store's answer says of one graph's engine."""
    build = res.manifest.get("build", {})
    return GraphBuild(
        graph=graph,
        path=res.path,
        digest=key.digest(),
        plan_bytes=int(res.manifest.get("size_bytes", 0)),
        build_seconds=float(build.get("builder_seconds", 0.0)) if res.built else 0.0,
        built=res.built,
        replaced=res.replaced,
        attention_layers=int(build.get("attention_layers", 0)),
    )


def graph_facts(graphs: dict[str, Any], graph: str) -> dict[str, Any]:
    """The export manifest's facts of ``graph`` (``prepare`` or ``step``)."""
    facts = graphs.get(f"{graph}.onnx")
    if not isinstance(facts, dict):
        raise StoreError(f"export manifest has no facts for {graph}.onnx: re-export it")
    return facts


def engine_key(
    *,
    checkpoint_sha256: str,
    net_config: NetConfig | str,
    height: int,
    width: int,
    onnx_path: str | os.PathLike[str],
    options: BuildOptions,
    flavour: Flavour | str = "auto",
    onnx_sha256: str | None = None,
    shape_range: ShapeRange | None = None,
) -> EngineKey:
    """The key of building ``onnx_path`` with ``options`` on the installed ``flavour``.

    Resolves the flavour, its version and the target compute capabilities, and hashes
    the ONNX (file, or folder with external data) unless ``onnx_sha256`` is given.
    ``shape_range``: a dynamic-shape engine (height / width: its opt size);
    ``options.weightless``: ``checkpoint_sha256`` is the architecture key.
    """
    resolved = detect_flavour(flavour)
    targets = options.targets(resolved)
    config_json = (
        net_config.to_json() if isinstance(net_config, NetConfig) else canonical_json(json.loads(net_config))
    )
    return EngineKey(
        checkpoint_sha256=checkpoint_sha256,
        net_config=config_json,
        height=height,
        width=width,
        batch_range=options.batch_range,
        precision=options.precision,
        flavour=resolved,
        trt_version=flavour_version(resolved),
        compute_capabilities=targets,
        onnx_sha256=onnx_sha256 or hash_artifact(Path(onnx_path))[0],
        build_options=canonical_json(options.key_fields()),
        shape_range=shape_range,
        weightless=options.weightless,
    )


def build_into_store(
    store: EngineStore,
    key: EngineKey,
    onnx_path: str | os.PathLike[str],
    options: BuildOptions,
    *,
    progress: BuildProgress | None = None,
    extra: Mapping[str, Any] | None = None,
    **put_kwargs: Any,
) -> PutResult:
    """Return the key's engine from ``store``, building ``onnx_path`` with ``options`` if it is absent.

    The build report (plan size, build seconds, flavour, targets) goes into the manifest,
    with ``extra`` (JSON-ready, e.g. which graph of an export this is). ``progress``
    receives the builder's phases (see :func:`pid_trt.compile.build.build_engine`);
    ``put_kwargs`` go to :meth:`~pid_trt.stores.artifacts.ArtifactStore.put`.
    """
    if key.build_options != canonical_json(options.key_fields()) or key.precision != options.precision:
        raise ConfigError("engine key was made for other build options than the ones given to build()")

    def _build(tmp: Path) -> dict[str, Any]:
        report: BuildReport = build_engine(onnx_path, tmp, options, key.flavour, progress)
        if report.trt_version != key.trt_version or report.compute_capabilities != key.compute_capabilities:
            raise ConfigError(
                f"engine key says {key.flavour.value} {key.trt_version} for {key.compute_capabilities}, "
                f"the build used {report.trt_version} for {report.compute_capabilities}"
            )
        return {
            "plan_bytes": report.plan_bytes,
            "builder_seconds": round(report.build_seconds, 3),
            "dynamic_batch": report.dynamic_batch,
            "dynamic_shapes": report.dynamic_shapes,
            "refittable_weights": report.refittable_weights,
            "attention_layers": report.attention_layers,
            "onnx_name": Path(onnx_path).name,
            **dict(extra or {}),
        }

    return store.put(key, _build, **put_kwargs)
