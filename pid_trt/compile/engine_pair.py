"""Engine pairs: the two TensorRT engines (``prepare`` + ``step``) of one export, in the store.

:func:`build_pair` exports (reusing a matching export) and builds both graphs of one
(net config, weights, bucket, precision, batch) into the engine store. :func:`find_pair`
is the runtime's look-up: it finds the pair for a request from the store alone (no ONNX,
no CUDA needed), refusing stale or foreign engines with the field that differs.
:func:`engine_status` classifies one store entry for ``pidtrt engines list``.

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

from pid_trt.buckets import Bucket
from pid_trt.compile.build import BuildOptions, BuildProgress
from pid_trt.compile.trt_flavour import Flavour, flavour_version
from pid_trt.config import DecoderConfig, Precision
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
) -> PairBuild:
    """Export ``spec`` (a :class:`pid_trt.netspec.NetSpec`) for ``bucket`` (reusing a matching
    export) and build both graphs into the engine store at ``engine_dir``.

    ``progress(graph)`` may return a :class:`BuildProgress` for that graph's build;
    ``on_phase(name)`` is told "export" / "prepare" / "step" as each phase starts.
    """
    from pid_trt.compile.export import ExportKey, export_onnx, find_export, spec_weights_id

    if options.batch_range != (batch, batch, batch):
        raise ConfigError(
            f"batch range {options.batch_range}: the exporter writes static-batch graphs; "
            f"build one engine pair per batch (--batch N)"
        )
    weights = spec_weights_id(spec)
    key = ExportKey.create(spec.config, weights, bucket, precision, batch)
    if on_phase:
        on_phase("export")
    start = time.perf_counter()
    export = find_export(key, export_dir)
    if export is None:
        from pid_trt.netspec import build_model

        export = export_onnx(build_model(spec), key, export_dir)
    export_seconds = time.perf_counter() - start
    store = EngineStore(engine_dir)
    out = []
    for graph in GRAPHS:
        if on_phase:
            on_phase(graph)
        onnx = export.prepare if graph == "prepare" else export.step
        ekey = EngineKey.for_build(
            checkpoint_sha256=weights_sha256(weights),
            net_config=spec.config,
            height=bucket.height,
            width=bucket.width,
            onnx_path=onnx,
            options=options,
            flavour=flavour,
            onnx_sha256=_graph_sha256(export.manifest, graph),
        )
        extra = {"graph": graph, "export_digest": export.key.digest(), "weights": weights}
        res = store.build(ekey, onnx, options, progress=progress(graph) if progress else None, extra=extra)
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
            )
        )
    return PairBuild(export.folder, export.built, export_seconds, tuple(out))


def key_from_manifest(manifest: dict[str, Any]) -> EngineKey:
    """The :class:`EngineKey` a manifest's ``key`` section describes (StoreError if malformed)."""
    k = manifest.get("key")
    try:
        return EngineKey(
            checkpoint_sha256=k["checkpoint_sha256"],
            net_config=canonical_json(k["net_config"]),
            height=int(k["height"]),
            width=int(k["width"]),
            batch_range=tuple(k["batch_range"]),
            precision=k["precision"],
            flavour=k["flavour"],
            trt_version=str(k["trt_version"]),
            compute_capabilities=tuple(k["compute_capabilities"]),
            onnx_sha256=k["onnx_sha256"],
            build_options=canonical_json(k["build_options"]),
        )
    except (TypeError, KeyError, ValueError) as exc:
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


@dataclass(frozen=True)
class EnginePair:
    """The two engines a decode runs, with their manifests' keys. Paths are plan files."""

    prepare: Path
    step: Path
    key: EngineKey
    export_digest: str


def _describe(k: dict[str, Any]) -> str:
    lo, _, hi = k.get("batch_range", [0, 0, 0])
    batch = f"batch {lo}" if lo == hi else f"batch {lo}-{hi}"
    return f"{k.get('width')}x{k.get('height')} {batch} {k.get('precision')}"


def find_pair(
    engine_dir: Path,
    config: DecoderConfig,
    weights: str,
    bucket: Bucket,
    precision: Precision,
    batch: int,
    build_hint: str,
    verify_hash: bool = True,
) -> EnginePair:
    """The engine pair for a decode, from the store at ``engine_dir`` alone.

    ``weights`` is the export weights id (:func:`pid_trt.compile.export.weights_id`). Raises
    :class:`StoreError` naming ``build_hint`` (the ``pidtrt build`` command) when there is
    none, listing the buckets that do have engines for this net and weights; refuses stale
    (other TensorRT version) or foreign (other net, corrupt) engines with the differing field.
    """
    store = EngineStore(engine_dir)
    net = json.loads(config.to_json())
    wsha = weights_sha256(weights)
    mine, others, problems = [], set(), []
    for entry in store.list():
        k = entry.manifest.get("key") if isinstance(entry.manifest, dict) else None
        if entry.problem or not isinstance(k, dict):
            problems.append(entry)
            continue
        if k.get("net_config") != net or k.get("checkpoint_sha256") != wsha:
            continue
        lo, _, hi = (k.get("batch_range") or [0, 0, 0])[:3]
        if (k.get("height"), k.get("width"), k.get("precision")) == (
            bucket.height,
            bucket.width,
            precision.value,
        ) and (lo <= batch <= hi):
            mine.append(entry)
        else:
            others.add(_describe(k))
    graphs: dict[str, dict[str, Entry]] = {}
    for entry in mine:
        b = entry.manifest.get("build", {})
        graphs.setdefault(str(b.get("export_digest")), {})[str(b.get("graph"))] = entry
    pairs = [g for g in graphs.values() if set(GRAPHS) <= set(g)]
    what = f"{bucket.name} batch {batch} {precision.value}"
    if not pairs:
        if mine:
            half = ", ".join(sorted(e.path.name for e in mine))
            raise StoreError(
                f"engine store {engine_dir} has only half of the pair for {what} ({half}): {build_hint}"
            )
        have = (
            "; engines exist for " + ", ".join(sorted(others))
            if others
            else "; the store has none for this net"
        )
        raise StoreError(f"no TensorRT engine for {what} in {engine_dir}{have}; build it: {build_hint}")
    pair = max(pairs, key=lambda g: min(e.created for e in g.values()))
    paths = {}
    for graph in GRAPHS:
        entry = pair[graph]
        status, reason = engine_status(entry)
        if status is not EngineStatus.OK:
            raise StoreError(
                f"{status.value} {graph} engine {entry.path.name} refused ({reason}); rebuild: {build_hint}"
            )
        key = key_from_manifest(entry.manifest)
        path = store.lookup(key, verify_hash=verify_hash)
        if path is None:
            raise StoreError(
                f"{graph} engine {entry.path.name} vanished during look-up; rebuild: {build_hint}"
            )
        paths[graph] = (path, key)
    export_digest = str(pair["step"].manifest.get("build", {}).get("export_digest"))
    return EnginePair(paths["prepare"][0], paths["step"][0], paths["step"][1], export_digest)


def build_command(spec: Any, bucket: Bucket, precision: Precision, batch: int, engine_dir: Path) -> str:
    """The ``pidtrt build ...`` command line that makes the engine pair of a decode request."""
    parts = ["pidtrt build"]
    preset = getattr(spec, "preset", None)
    if preset is not None:
        parts.append(f"--backbone {preset.backbone.value}")
        if preset.released:
            parts.append(f"--ckpt-type {preset.ckpt_type.value}")
    else:
        parts.append("--net-config NET.json")
    parts.append(f"--size {bucket.name}")
    parts.append(f"--precision {precision.value}")
    if batch != 1:
        parts.append(f"--batch {batch}")
    if getattr(spec, "random_weights", False):
        parts.append("--random-weights")
        if getattr(spec, "weights_seed", 0):
            parts.append(f"--weights-seed {spec.weights_seed}")
    else:
        parts.append(f"--checkpoint {spec.checkpoint}")
    if Path(engine_dir) != Path("engines"):
        parts.append(f"--engine-dir {engine_dir}")
    return " ".join(parts)
