"""The ONNX export store (``export/`` by default): both graphs of an export, by :class:`ExportKey`.

An :class:`~pid_trt.stores.artifacts.ArtifactStore` of kind ``onnx``: a folder
``<label>-<digest16>/`` holding ``prepare.onnx`` and ``step.onnx`` with their external data,
and a sibling ``<folder>.manifest.json`` with the full :class:`ExportKey`, per-file sha256 and
graph facts. A cached export is reused only when its manifest matches the key. What writes
the graphs is :func:`pid_trt.compile.export.export_onnx`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pid_trt.errors import StoreError
from pid_trt.stores.artifacts import ArtifactStore, canonical_json
from pid_trt.stores.keys import ExportKey

DEFAULT_EXPORT_DIR = Path("export")
PREPARE_FILE = "prepare.onnx"
STEP_FILE = "step.onnx"
#: The graphs of an export, in the order they are built and run.
GRAPHS: tuple[str, ...] = ("prepare", "step")


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

    @classmethod
    def at(cls, folder: Path, manifest: dict[str, Any], built: bool, key: ExportKey) -> ExportResult:
        """The export stored in ``folder`` (its graphs are :data:`PREPARE_FILE`, :data:`STEP_FILE`)."""
        return cls(folder, folder / PREPARE_FILE, folder / STEP_FILE, manifest, built, key)

    @property
    def size_bytes(self) -> int:
        return int(self.manifest.get("size_bytes", 0))


def export_store(export_dir: str | Path = DEFAULT_EXPORT_DIR) -> ArtifactStore:
    """The ONNX export cache at ``export_dir`` (kind ``onnx``)."""
    return ArtifactStore(export_dir, kind=ExportKey.kind)


def find_export(key: ExportKey, export_dir: str | Path = DEFAULT_EXPORT_DIR) -> ExportResult | None:
    """The cached export of ``key``, or None. Raises StoreError for a stale / corrupt one."""
    store = export_store(export_dir)
    path = store.lookup(key, verify_hash=False)
    if path is None:
        return None
    return ExportResult.at(path, store.manifest(key) or {}, False, key)


def graph_sha256(export_manifest: dict[str, Any], graph: str) -> str:
    """sha256 over a graph file (``graph``: ``prepare`` or ``step``) and its external data,
    from the export manifest's file list: an engine key's ``onnx_sha256``."""
    files = export_manifest.get("build", {}).get("files", {})
    mine = {k: v["sha256"] for k, v in files.items() if k.startswith(f"{graph}.onnx")}
    if f"{graph}.onnx" not in mine:
        raise StoreError(f"export manifest lists no {graph}.onnx: re-export it")
    return hashlib.sha256(canonical_json(mine).encode()).hexdigest()
