"""The runtime's choice of an engine pair, from the engine store alone (no ONNX, no CUDA).

:func:`select_pair` is the one selection rule (called by
:meth:`pid_trt.backends.trt_backend.TrtBackend.from_request`): a static pair for the exact
size first, else a dynamic pair whose range holds the size and batch, else a weightless pair
(static, then dynamic; refitted at load), else a :class:`~pid_trt.errors.StoreError` naming
the ``pidtrt build`` command (:func:`build_command`). Stale or corrupt engines are refused
with the field that differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pid_trt.buckets import Bucket, ShapeRange
from pid_trt.config import NetConfig, Precision
from pid_trt.errors import ConfigError, StoreError
from pid_trt.stores.artifacts import Entry
from pid_trt.stores.exports import GRAPHS
from pid_trt.stores.keys import EngineKey, key_from_manifest, weights_sha256
from pid_trt.stores.store import EngineStatus, EngineStore, engine_status

if TYPE_CHECKING:
    from pid_trt.netspec import NetSpec


@dataclass(frozen=True)
class EnginePair:
    """The two engines a decode runs, with their manifests' keys. Paths are plan files.

    ``key`` is the step engine's key (its ``shape_range`` / ``weightless`` say what kind of
    pair this is); ``manifests``: graph -> that engine's manifest (a weightless engine's
    ``build.refit_weights`` lists the weights to refit it with).
    """

    prepare: Path
    step: Path
    key: EngineKey
    export_digest: str
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)

    @property
    def kind(self) -> str:
        """``static``, ``dynamic``, ``static weightless`` or ``dynamic weightless``."""
        base = "dynamic" if self.key.shape_range is not None else "static"
        return base + (" weightless" if self.key.weightless else "")

    @property
    def size_bytes(self) -> int:
        """Both plan files' size on disk."""
        return sum(p.stat().st_size for p in (self.prepare, self.step))

    @property
    def builder_seconds(self) -> float | None:
        """Both engines' builder time from their manifests (None: not recorded)."""
        total = sum(float(m.get("build", {}).get("builder_seconds", 0.0)) for m in self.manifests.values())
        return total or None


def _describe(k: dict[str, Any]) -> str:
    lo, _, hi = (k.get("batch_range") or [0, 0, 0])[:3]
    batch = f"batch {lo}" if lo == hi else f"batch {lo}-{hi}"
    rng = k.get("range")
    if isinstance(rng, dict):
        try:
            size = "dynamic " + ShapeRange.from_fields(rng).name.split(" ")[0]
        except ConfigError:
            size = "dynamic ?"
    else:
        size = f"{k.get('width')}x{k.get('height')}"
    weightless = " weightless" if k.get("weightless") else ""
    return f"{size} {batch} {k.get('precision')}{weightless}"


#: Preference of the pair kinds, best first: exact static size, covering dynamic range,
#: then the weightless ones (they cost a refit at load).
_TIERS = ("static", "dynamic", "static weightless", "dynamic weightless")


def _fit(k: dict[str, Any], bucket: Bucket, batch: int) -> tuple[str, float] | None:
    """(kind, preference within the kind: smaller is better) when the engine of manifest key
    ``k`` serves a ``bucket`` decode of ``batch``, else None."""
    lo, _, hi = (k.get("batch_range") or [0, 0, 0])[:3]
    suffix = " weightless" if k.get("weightless") else ""
    if isinstance(k.get("range"), dict):
        try:
            r = ShapeRange.from_fields(k["range"])
        except ConfigError:
            return None
        if not r.contains(bucket.height, bucket.width, batch):
            return None
        return "dynamic" + suffix, float(r.height[2] * r.width[2] * r.batch[2])  # the tightest range
    if (k.get("height"), k.get("width")) == (bucket.height, bucket.width) and lo <= batch <= hi:
        return "static" + suffix, 0.0
    return None


def select_pair(
    engine_dir: Path,
    config: NetConfig,
    weights: str,
    bucket: Bucket,
    precision: Precision,
    batch: int,
    build_hint: str,
    verify_hash: bool = True,
    dynamic_hint: str | None = None,
) -> EnginePair:
    """The engine pair for a decode, from the store at ``engine_dir`` alone: the selection
    rule of the runtime (:meth:`pid_trt.backends.trt_backend.TrtBackend.from_request`).

    In order: a static pair for exactly ``bucket`` (and a batch range holding ``batch``) with
    these ``weights``; else a dynamic pair with these weights whose range holds the size and
    batch (the tightest range, then the newest); else a weightless static pair, then a
    weightless dynamic one, of this net config and precision (refitted at load). ``weights``
    is the export weights id (:func:`pid_trt.stores.keys.weights_id`). Raises
    :class:`StoreError` naming ``build_hint`` (the ``pidtrt build`` command; ``dynamic_hint``
    the one for a range) when none fits, listing the engines this net and weights do have;
    refuses stale (other TensorRT version) or foreign (other net, corrupt) engines with the
    differing field.
    """
    store = EngineStore(engine_dir)
    candidates, rank, others = _candidates(store, config, weights, bucket, batch, precision)
    what = f"{bucket.name} batch {batch} {precision.value}"
    complete = [g for g, graphs in candidates.items() if set(GRAPHS) <= set(graphs)]
    if not complete:
        raise _no_pair(engine_dir, what, candidates, others, build_hint, dynamic_hint)
    best = min((_TIERS.index(g[0]), rank[g]) for g in complete)
    ties = [g for g in complete if (_TIERS.index(g[0]), rank[g]) == best]
    chosen = max(ties, key=lambda g: min(e.created for e in candidates[g].values()))
    pair = candidates[chosen]
    if chosen[0].startswith("dynamic") and dynamic_hint:
        build_hint = dynamic_hint  # what rebuilds a stale dynamic pair
    paths = {graph: _checked_engine(store, graph, pair[graph], build_hint, verify_hash) for graph in GRAPHS}
    export_digest = str(pair["step"].manifest.get("build", {}).get("export_digest"))
    manifests = {g: pair[g].manifest for g in GRAPHS}
    return EnginePair(paths["prepare"][0], paths["step"][0], paths["step"][1], export_digest, manifests)


#: A group of engines that may form a pair: (kind, export digest).
_Group = tuple[str, str]


def _candidates(
    store: EngineStore, config: NetConfig, weights: str, bucket: Bucket, batch: int, precision: Precision
) -> tuple[dict[_Group, dict[str, Entry]], dict[_Group, float], set[str]]:
    """The store's engines of this net (and weights, unless weightless) grouped by (kind, export
    digest) -> {graph: entry} when they serve the decode, with each group's preference within
    its kind; and descriptions of this net's engines that do not serve it."""
    net = json.loads(config.to_json())
    wsha = weights_sha256(weights)
    candidates: dict[_Group, dict[str, Entry]] = {}
    rank: dict[_Group, float] = {}
    others: set[str] = set()
    for entry in store.list():
        k = entry.manifest.get("key") if isinstance(entry.manifest, dict) else None
        if entry.problem or not isinstance(k, dict) or k.get("net_config") != net:
            continue
        if not k.get("weightless") and k.get("checkpoint_sha256") != wsha:
            continue
        fit = _fit(k, bucket, batch) if k.get("precision") == precision.value else None
        if fit is None:
            others.add(_describe(k))
            continue
        b = entry.manifest.get("build", {})
        group = (fit[0], str(b.get("export_digest")))
        candidates.setdefault(group, {})[str(b.get("graph"))] = entry
        rank[group] = fit[1]
    return candidates, rank, others


def _no_pair(
    engine_dir: Path,
    what: str,
    candidates: dict[_Group, dict[str, Entry]],
    others: set[str],
    build_hint: str,
    dynamic_hint: str | None,
) -> StoreError:
    """The error when no complete pair serves ``what``: half a pair, or none (naming the
    engines the store has for this net, and the build command)."""
    if candidates:
        half = ", ".join(sorted(e.path.name for g in candidates.values() for e in g.values()))
        return StoreError(
            f"engine store {engine_dir} has only half of the pair for {what} ({half}): {build_hint}"
        )
    have = (
        "; engines exist for " + ", ".join(sorted(others)) if others else "; the store has none for this net"
    )
    alt = f" (or one engine for a range of sizes: {dynamic_hint})" if dynamic_hint else ""
    return StoreError(f"no TensorRT engine for {what} in {engine_dir}{have}; build it: {build_hint}{alt}")


def _checked_engine(
    store: EngineStore, graph: str, entry: Entry, build_hint: str, verify_hash: bool
) -> tuple[Path, EngineKey]:
    """(plan path, key) of a chosen engine; StoreError when it is stale, corrupt or gone."""
    status, reason = engine_status(entry)
    if status is not EngineStatus.OK:
        raise StoreError(
            f"{status.value} {graph} engine {entry.path.name} refused ({reason}); rebuild: {build_hint}"
        )
    key = key_from_manifest(entry.manifest)
    path = store.lookup(key, verify_hash=verify_hash)
    if path is None:
        raise StoreError(f"{graph} engine {entry.path.name} vanished during look-up; rebuild: {build_hint}")
    return path, key


def build_command(
    spec: NetSpec,
    bucket: Bucket | None,
    precision: Precision,
    batch: int,
    engine_dir: Path,
    dynamic: bool = False,
) -> str:
    """The ``pidtrt build ...`` command line that makes the engine pair of a decode request
    (``dynamic``: the one dynamic pair of the preset's trained range instead of ``bucket``)."""
    parts = ["pidtrt build"]
    preset = spec.preset
    if preset is not None:
        parts.append(f"--backbone {preset.backbone.value}")
        if preset.released:
            parts.append(f"--ckpt-type {preset.ckpt_type.value}")
    else:
        parts.append("--net-config NET.json")
    if dynamic or bucket is None:
        parts.append("--dynamic")
    else:
        parts.append(f"--size {bucket.name}")
    parts.append(f"--precision {precision.value}")
    if batch != 1 and not dynamic:
        parts.append(f"--batch {batch}")
    if spec.random_weights:
        parts.append("--random-weights")
        if spec.weights_seed:
            parts.append(f"--weights-seed {spec.weights_seed}")
    else:
        parts.append(f"--checkpoint {spec.checkpoint}")
    if Path(engine_dir) != Path("engines"):
        parts.append(f"--engine-dir {engine_dir}")
    return " ".join(parts)
