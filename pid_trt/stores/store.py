"""The engine store (docs/design.md §3): engine keys, and the ``engines/`` folder of plans + manifests.

An engine's name and manifest carry everything that invalidates it (:class:`EngineKey`);
the mechanics (content addressing, locking, atomic commit, validation) are the generic
:class:`pid_trt.stores.artifacts.ArtifactStore`, which the ONNX export cache reuses with
``kind="onnx"``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pid_trt.buckets import ShapeRange
from pid_trt.compile.build import BuildOptions, BuildProgress, BuildReport, build_engine
from pid_trt.compile.trt_flavour import Flavour, detect_flavour, flavour_version
from pid_trt.config import NetConfig, Precision
from pid_trt.errors import ConfigError
from pid_trt.stores.artifacts import (
    ArtifactStore,
    Entry,
    PutResult,
    canonical_json,
    hash_artifact,
    key_digest,
)

__all__ = ["DEFAULT_ENGINE_DIR", "EngineKey", "EngineStore", "Entry", "PutResult", "file_sha256"]

DEFAULT_ENGINE_DIR = Path("engines")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a file, or of an ONNX folder with its external data."""
    return hash_artifact(Path(path))[0]


def _sha(value: str, name: str) -> str:
    value = str(value).lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ConfigError(f"engine key {name}={value!r}: expected a sha256 hex digest (64 characters)")
    return value


@dataclass(frozen=True)
class EngineKey:
    """Everything that invalidates an engine. Height and width in output pixels.

    ``net_config`` is the canonical JSON of the net config (:meth:`NetConfig.to_json`);
    ``build_options`` the canonical JSON of :meth:`BuildOptions.key_fields`.

    A dynamic-shape engine has a ``shape_range`` and is keyed by it (the manifest's ``range``
    replaces ``height`` / ``width``, which then hold its opt size). A ``weightless`` engine
    carries no checkpoint: ``checkpoint_sha256`` then holds its architecture key (net config,
    precision, names / types / shapes of the weights to refit: :mod:`pid_trt.compile.refit`),
    written ``architecture_sha256`` in the manifest, and ``onnx_sha256`` the graph's structure
    hash (weight values excluded), so one plan serves every checkpoint of that architecture.
    """

    kind: ClassVar[str] = "engine"
    suffix: ClassVar[str] = ".plan"

    checkpoint_sha256: str
    net_config: str
    height: int
    width: int
    batch_range: tuple[int, int, int]
    precision: Precision
    flavour: Flavour
    trt_version: str
    compute_capabilities: tuple[str, ...]
    onnx_sha256: str
    build_options: str
    shape_range: ShapeRange | None = None
    weightless: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint_sha256", _sha(self.checkpoint_sha256, "checkpoint_sha256"))
        object.__setattr__(self, "onnx_sha256", _sha(self.onnx_sha256, "onnx_sha256"))
        object.__setattr__(self, "precision", Precision(self.precision))
        object.__setattr__(self, "flavour", Flavour(self.flavour))
        object.__setattr__(self, "batch_range", tuple(int(b) for b in self.batch_range))
        object.__setattr__(self, "compute_capabilities", tuple(str(c) for c in self.compute_capabilities))
        if self.shape_range is not None:  # a dynamic engine's size is its range's opt size
            object.__setattr__(self, "height", self.shape_range.height[1])
            object.__setattr__(self, "width", self.shape_range.width[1])
        if self.height <= 0 or self.width <= 0:
            raise ConfigError(f"engine key bucket {self.width}x{self.height}: expected positive pixel sizes")

    @classmethod
    def for_build(
        cls,
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
            net_config.to_json()
            if isinstance(net_config, NetConfig)
            else canonical_json(json.loads(net_config))
        )
        return cls(
            checkpoint_sha256=checkpoint_sha256,
            net_config=config_json,
            height=height,
            width=width,
            batch_range=options.batch_range,
            precision=options.precision,
            flavour=resolved,
            trt_version=flavour_version(resolved),
            compute_capabilities=targets,
            onnx_sha256=onnx_sha256 or file_sha256(onnx_path),
            build_options=canonical_json(options.key_fields()),
            shape_range=shape_range,
            weightless=options.weightless,
        )

    def fields(self) -> dict[str, Any]:
        """JSON-ready key fields (what the manifest's ``key`` holds). Static engines with
        weights keep the fields (and so the digests) they had before ranges and weightless
        plans existed."""
        size: dict[str, Any] = {"height": self.height, "width": self.width}
        if self.shape_range is not None:
            size = {"range": self.shape_range.fields()}
        weights: dict[str, Any] = {"checkpoint_sha256": self.checkpoint_sha256}
        if self.weightless:
            weights = {"architecture_sha256": self.checkpoint_sha256, "weightless": True}
        return {
            **weights,
            "net_config": json.loads(self.net_config),
            **size,
            "batch_range": list(self.batch_range),
            "precision": self.precision.value,
            "flavour": self.flavour.value,
            "trt_version": self.trt_version,
            "compute_capabilities": list(self.compute_capabilities),
            "onnx_sha256": self.onnx_sha256,
            "build_options": json.loads(self.build_options),
        }

    def digest(self) -> str:
        """sha256 (hex) of the canonical key: the engine's content address."""
        return key_digest(self)

    def label(self) -> str:
        """Readable file-name prefix, e.g. ``2048x2048-b1-4-bf16-tensorrt-rtx1.7.1-ck3f9a2c1d``."""
        lo, _, hi = self.batch_range
        net = hashlib.sha256(self.net_config.encode()).hexdigest()[:4]
        version = ".".join(self.trt_version.split(".")[:3])
        size = f"{self.width}x{self.height}-b{lo}-{hi}"
        if self.shape_range is not None:
            size = self.shape_range.label()
        weights = ("wl" if self.weightless else "ck") + self.checkpoint_sha256[:6]
        return f"{size}-{self.precision.value}-{self.flavour.value}{version}-{weights}{net}"


class EngineStore(ArtifactStore):
    """The engine folder (``engines/`` by default): TensorRT plans by :class:`EngineKey`."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ENGINE_DIR) -> None:
        super().__init__(root, kind=EngineKey.kind)

    def build(
        self,
        key: EngineKey,
        onnx_path: str | os.PathLike[str],
        options: BuildOptions,
        *,
        progress: BuildProgress | None = None,
        extra: Mapping[str, Any] | None = None,
        **put_kwargs: Any,
    ) -> PutResult:
        """Return the key's engine, building ``onnx_path`` with ``options`` if it is absent.

        The build report (plan size, build seconds, flavour, targets) goes into the manifest,
        with ``extra`` (JSON-ready, e.g. which graph of an export this is). ``progress``
        receives the builder's phases (see :func:`pid_trt.compile.build.build_engine`).
        """
        if key.build_options != canonical_json(options.key_fields()) or key.precision != options.precision:
            raise ConfigError("engine key was made for other build options than the ones given to build()")

        def _build(tmp: Path) -> dict[str, Any]:
            report: BuildReport = build_engine(onnx_path, tmp, options, key.flavour, progress)
            if (
                report.trt_version != key.trt_version
                or report.compute_capabilities != key.compute_capabilities
            ):
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

        return self.put(key, _build, **put_kwargs)
