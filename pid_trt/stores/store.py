"""The engine store (docs/design.md §3): the ``engines/`` folder of TensorRT plans + manifests.

An engine's name and manifest carry everything that invalidates it
(:class:`~pid_trt.stores.keys.EngineKey`); the mechanics (content addressing, locking, atomic
commit, validation) are the generic :class:`pid_trt.stores.artifacts.ArtifactStore`, which
the ONNX export store (:mod:`pid_trt.stores.exports`) reuses with ``kind="onnx"``. Building
a plan into the store is :func:`pid_trt.compile.engine_pair.build_into_store`; choosing a pair
for a decode, :func:`pid_trt.stores.select.select_pair`.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

from pid_trt.errors import BackendUnavailableError, StoreError
from pid_trt.stores.artifacts import ArtifactStore, Entry, PutResult, key_digest
from pid_trt.stores.keys import EngineKey, key_from_manifest
from pid_trt.trt_flavour import Flavour, flavour_version

__all__ = [
    "DEFAULT_ENGINE_DIR", "EngineStatus", "EngineStore", "Entry", "PutResult", "engine_status", "installed_version",
]  # fmt: skip

DEFAULT_ENGINE_DIR = Path("engines")


class EngineStore(ArtifactStore):
    """The engine folder (``engines/`` by default): TensorRT plans by :class:`EngineKey`."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ENGINE_DIR) -> None:
        super().__init__(root, kind=EngineKey.kind)


class EngineStatus(str, Enum):
    """Health of a store entry: usable, built by another TensorRT, or broken."""

    OK = "ok"
    STALE = "stale"
    CORRUPT = "corrupt"


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
