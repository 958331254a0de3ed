"""TensorRT-RTX runtime caches, kept in the engine store (``engines/runtime-cache/``).

TensorRT-RTX finishes an engine just in time on the GPU it runs on (and, for a dynamic-shape
engine, compiles shape-specialised kernels per new shape): its runtime cache holds those
kernels so the next process does not compile them again. The cache is only valid for one
engine on one GPU model with one TensorRT-RTX version and CUDA driver, so it is keyed like a
plan (:class:`RuntimeCacheKey`: engine digest, compute capability, GPU name, flavour and
version, driver version) and stored like one: content-addressed file + manifest, the
manifest written last, both atomically (temp file + rename) under the key's lock.

Unlike a plan a cache changes: :meth:`RuntimeCacheStore.save` replaces it. A cache whose
manifest does not match its key, or whose bytes do not match the manifest, is never returned
(:meth:`RuntimeCacheStore.load` gives None and the runtime starts an empty one); TensorRT-RTX
also validates the blob against the environment when it deserializes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from pid_trt.atomic import atomic_write_bytes
from pid_trt.errors import StoreError
from pid_trt.stores.artifacts import (
    MANIFEST_FORMAT,
    ArtifactStore,
    canonical_json,
    file_lock,
    hash_artifact,
    key_digest,
)

#: Sub-folder of the engine store holding runtime caches.
RUNTIME_CACHE_DIR = "runtime-cache"


@dataclass(frozen=True)
class RuntimeCacheKey:
    """Everything that invalidates a runtime cache: the engine (its store digest) and the
    machine that compiled the kernels."""

    kind: ClassVar[str] = "rtcache"
    suffix: ClassVar[str] = ".rtcache"

    engine_digest: str
    compute_capability: str
    gpu_name: str
    flavour: str
    trt_version: str
    driver_version: str

    def fields(self) -> dict[str, Any]:
        """Every field, by name (all plain strings)."""
        return dataclasses.asdict(self)

    def label(self) -> str:
        return f"{self.engine_digest[:12]}-sm{self.compute_capability.replace('.', '')}"


class RuntimeCacheStore(ArtifactStore):
    """The runtime caches of the engine store at ``engine_dir``."""

    def __init__(self, engine_dir: str | os.PathLike[str]) -> None:
        super().__init__(Path(engine_dir) / RUNTIME_CACHE_DIR, kind=RuntimeCacheKey.kind)

    def load(self, key: RuntimeCacheKey) -> bytes | None:
        """The cache of ``key``, or None (none yet, or stale / corrupt: never returned)."""
        try:
            path = self.lookup(key, verify_hash=True)
        except StoreError:
            return None
        return path.read_bytes() if path is not None else None

    def save(self, key: RuntimeCacheKey, data: bytes) -> Path:
        """Replace the cache of ``key`` with ``data``: file first, manifest last, each atomic."""
        self._check_kind(key)
        self.root.mkdir(parents=True, exist_ok=True)
        path, manifest_path = self.path_for(key), self.manifest_path_for(key)
        with file_lock(self._lock_path(key_digest(key))):
            if manifest_path.exists():
                manifest_path.unlink()  # un-commit, then replace the bytes
            atomic_write_bytes(path, bytes(data))
            sha, size = hash_artifact(path)
            manifest = {
                "format": MANIFEST_FORMAT,
                "kind": self.kind,
                "digest": key_digest(key),
                "path": path.name,
                "key": json.loads(canonical_json(key.fields())),
                "sha256": sha,
                "size_bytes": size,
                "build_seconds": 0.0,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "build": {},
            }
            atomic_write_bytes(
                manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
            )
        return path
