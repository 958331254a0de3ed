"""Engine pairs: the two TensorRT engines (``prepare`` + ``step``) of one export, in the store.

:func:`build_pair` exports (reusing a matching export) and builds both graphs of one
(net config, weights, bucket, precision, batch) into the engine store. The runtime's look-up
(from the store alone: no ONNX, no CUDA) is :mod:`pid_trt.compile.engine_select`, which
imports this module. :func:`engine_status` classifies one store entry for ``pidtrt engines list``.

Each engine's manifest ``build`` section records ``graph`` (``prepare`` or ``step``) and
``export_digest`` (the export both came from), which pair the two engines.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pid_trt.buckets import Bucket, ShapeRange
from pid_trt.compile.build import BuildOptions, BuildProgress
from pid_trt.compile.trt_flavour import Flavour, flavour_version
from pid_trt.config import Precision
from pid_trt.errors import BackendUnavailableError, ConfigError, StoreError
from pid_trt.stores.artifacts import Entry, canonical_json, key_digest
from pid_trt.stores.store import EngineKey, EngineStore

#: The graphs of an export, in the order they are built and run.
GRAPHS: tuple[str, ...] = ("prepare", "step")


class EngineStatus(str, Enum):
    """Health of a store entry: usable, built by another TensorRT, or broken."""

    OK = "ok"
    STALE = "stale"
    CORRUPT = "corrupt"


def weights_sha256(weights: str) -> str:
    """The engine key's ``checkpoint_sha256`` for an export's weights id
    (:func:`pid_trt.compile.export.weights_id`): a checkpoint's sha256 as is, else the sha256 of the
    id text (``random:<seed>`` for seeded random weights)."""
    w = weights.lower()
    if len(w) == 64 and all(c in "0123456789abcdef" for c in w):
        return w
    return hashlib.sha256(weights.encode()).hexdigest()


def _graph_sha256(export_manifest: dict[str, Any], graph: str) -> str:
    """sha256 over a graph file and its external data, from the export manifest's file list."""
    files = export_manifest.get("build", {}).get("files", {})
    mine = {k: v["sha256"] for k, v in files.items() if k.startswith(f"{graph}.onnx")}
    if f"{graph}.onnx" not in mine:
        raise StoreError(f"export manifest lists no {graph}.onnx: re-export it")
    return hashlib.sha256(canonical_json(mine).encode()).hexdigest()


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
    spec: Any,
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
    import dataclasses

    from pid_trt.compile.export import ExportKey, export_onnx, find_export, spec_weights_id

    if shape_range is not None:
        if options.batch_range != shape_range.batch:
            raise ConfigError(
                f"batch range {options.batch_range}: expected the shape range's {shape_range.batch}"
            )
        bucket, batch = shape_range.opt_bucket, shape_range.batch[1]
    elif options.batch_range != (batch, batch, batch):
        raise ConfigError(
            f"batch range {options.batch_range}: the exporter writes static-batch graphs; "
            f"build one engine pair per batch (--batch N), or one dynamic pair (--dynamic)"
        )
    weightless = options.weightless
    if weightless:  # before the export: refused at once where it cannot be built (no GPU, several targets)
        from pid_trt.compile.trt_flavour import detect_flavour, normalise_targets

        normalise_targets(detect_flavour(flavour), options.compute_capabilities, weightless=True)
    weights = spec_weights_id(spec)
    key = ExportKey.create(
        spec.config, weights, bucket, precision, batch, shape_range=shape_range, refittable=weightless
    )
    if on_phase:
        on_phase("export")
    start = time.perf_counter()
    export = find_export(key, export_dir)
    if export is None:
        from pid_trt.netspec import build_model

        export = export_onnx(build_model(spec), key, export_dir)
    export_seconds = time.perf_counter() - start
    store = EngineStore(engine_dir)
    graphs_facts = export.manifest.get("build", {}).get("graphs", {})
    profiles = None
    if shape_range is not None:
        from pid_trt.compile.dynamic import profile_shapes

        profiles = profile_shapes(spec.config, shape_range)
    out = []
    for graph in GRAPHS:
        if on_phase:
            on_phase(graph)
        onnx = export.prepare if graph == "prepare" else export.step
        facts = graph_facts(graphs_facts, graph)
        opts = options
        if profiles is not None:
            opts = dataclasses.replace(opts, profile=tuple((n, *v) for n, v in profiles[graph].items()))
        extra: dict[str, Any] = {"graph": graph, "export_digest": export.key.digest(), "weights": weights}
        ck_sha, onnx_sha = weights_sha256(weights), _graph_sha256(export.manifest, graph)
        if weightless:
            from pid_trt.compile.refit import architecture_key

            refit = facts.get("weights") or []
            opts = dataclasses.replace(opts, refit_weights=tuple(n for n, _, _ in refit))
            ck_sha = architecture_key(json.loads(spec.config.to_json()), precision.value, refit)
            onnx_sha = str(facts.get("structure_sha256") or "")
            extra["refit_weights"] = refit
        ekey = EngineKey.for_build(
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
        res = store.build(ekey, onnx, opts, progress=progress(graph) if progress else None, extra=extra)
        build = res.manifest.get("build", {})
        out.append(
            GraphBuild(
                graph=graph,
                path=res.path,
                digest=ekey.digest(),
                plan_bytes=int(res.manifest.get("size_bytes", 0)),
                build_seconds=float(build.get("builder_seconds", 0.0)) if res.built else 0.0,
                built=res.built,
                replaced=res.replaced,
                attention_layers=int(build.get("attention_layers", 0)),
            )
        )
    return PairBuild(export.folder, export.built, export_seconds, tuple(out))


def graph_facts(graphs: dict[str, Any], graph: str) -> dict[str, Any]:
    """The export manifest's facts of ``graph`` (``prepare`` or ``step``)."""
    facts = graphs.get(f"{graph}.onnx")
    if not isinstance(facts, dict):
        raise StoreError(f"export manifest has no facts for {graph}.onnx: re-export it")
    return facts


def key_from_manifest(manifest: dict[str, Any]) -> EngineKey:
    """The :class:`EngineKey` a manifest's ``key`` section describes (StoreError if malformed)."""
    k = manifest.get("key")
    try:
        shape_range = ShapeRange.from_fields(k["range"]) if "range" in k else None
        weightless = bool(k.get("weightless", False))
        height, width = (
            (shape_range.height[1], shape_range.width[1])
            if shape_range
            else (int(k["height"]), int(k["width"]))
        )
        return EngineKey(
            checkpoint_sha256=k["architecture_sha256"] if weightless else k["checkpoint_sha256"],
            net_config=canonical_json(k["net_config"]),
            height=height,
            width=width,
            batch_range=tuple(k["batch_range"]),
            precision=k["precision"],
            flavour=k["flavour"],
            trt_version=str(k["trt_version"]),
            compute_capabilities=tuple(k["compute_capabilities"]),
            onnx_sha256=k["onnx_sha256"],
            build_options=canonical_json(k["build_options"]),
            shape_range=shape_range,
            weightless=weightless,
        )
    except (TypeError, KeyError, ValueError, ConfigError) as exc:
        raise StoreError(f"engine manifest key is malformed ({type(exc).__name__}: {exc})") from None


def installed_version(flavour: Flavour) -> str | None:
    """Version of the installed TensorRT package of ``flavour``; None when it is not installed."""
    try:
        return flavour_version(flavour)
    except BackendUnavailableError:
        return None


def engine_status(entry: Entry) -> tuple[EngineStatus, str]:
    """Classify a store entry without loading it: (status, one-line reason or "")."""
    if entry.problem:
        return EngineStatus.CORRUPT, entry.problem
    try:
        key = key_from_manifest(entry.manifest)
    except StoreError as exc:
        return EngineStatus.CORRUPT, str(exc)
    have = installed_version(key.flavour)
    if have is None:
        return EngineStatus.STALE, f"{key.flavour.value} is not installed"
    if have != key.trt_version:
        return (
            EngineStatus.STALE,
            f"trt_version: built with {key.flavour.value} {key.trt_version}, installed {have}",
        )
    if key_digest(key) != entry.digest:
        return EngineStatus.CORRUPT, "manifest key does not hash to its digest (edited?)"
    return EngineStatus.OK, ""
