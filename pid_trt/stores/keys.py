"""Store keys: everything that invalidates a stored artifact, and its content address.

:class:`ExportKey` keys an ONNX export (both graphs of one net config, weights, bucket or
shape range, precision and batch) in the export store (:mod:`pid_trt.stores.exports`);
:class:`EngineKey` keys one TensorRT plan in the engine store (:mod:`pid_trt.stores.store`).
A key's :meth:`fields` are what its manifest's ``key`` holds and what its digest hashes; the
weights of both are named by a weights id (:func:`weights_id`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pid_trt.buckets import Bucket, ShapeRange, latent_shape
from pid_trt.config import NetConfig, Precision
from pid_trt.errors import ConfigError, StoreError
from pid_trt.quoting import printable, quote
from pid_trt.stores.artifacts import canonical_json, key_digest
from pid_trt.trt_flavour import Flavour
from pid_trt.versions import package_versions

if TYPE_CHECKING:
    from pid_trt.netspec import NetSpec

DEFAULT_OPSET = 23
#: Bumped whenever the graphs the exporter (:mod:`pid_trt.compile.export`) writes change for
#: the same key (2: FP8 step graphs on a bf16 base), so that older exports no longer match.
EXPORTER_REVISION = 2
#: The distributions whose versions an export key records (a new exporter may write other graphs).
EXPORTER_PACKAGES: tuple[str, ...] = ("torch", "onnx", "onnxscript")
#: Precisions the exporter writes graphs in (fp8: Q/DQ step graphs on a bf16 base).
EXPORT_PRECISIONS: tuple[Precision, ...] = (Precision.FP32, Precision.FP16, Precision.BF16, Precision.FP8)


def weights_id(checkpoint_sha256: str | None = None, random_seed: int | None = None) -> str:
    """Key text of the weights: a checkpoint's sha256 (hex) or ``random:<seed>``."""
    if (checkpoint_sha256 is None) == (random_seed is None):
        raise ConfigError("weights: give exactly one of a checkpoint sha256 or a random seed")
    if random_seed is not None:
        return f"random:{int(random_seed)}"
    assert checkpoint_sha256 is not None  # exactly one of the two was given
    sha = checkpoint_sha256.lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ConfigError(f"checkpoint sha256 {quote(checkpoint_sha256)}: expected 64 hex digits")
    return sha


def spec_weights_id(spec: NetSpec) -> str:
    """:func:`weights_id` of a :class:`pid_trt.netspec.NetSpec` (hashes the checkpoint file)."""
    if spec.random_weights:
        return weights_id(random_seed=spec.weights_seed)
    from pid_trt.checkpoints import file_sha256

    assert spec.checkpoint is not None  # NetSpec: a checkpoint exactly when not random weights
    return weights_id(checkpoint_sha256=file_sha256(spec.checkpoint))


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
            raise ConfigError(f"batch {quote(batch)}: expected an integer >= 1")
        if opset < 23:
            raise ConfigError(
                f"opset {opset}: expected >= 23 (attention exports as the fused Attention op from 23)"
            )
        try:
            precision = Precision(precision)
        except ValueError:
            raise ConfigError(f"precision {quote(precision)}: expected fp32, fp16, bf16 or fp8") from None
        if precision not in EXPORT_PRECISIONS:
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
                   tuple(sorted(package_versions(EXPORTER_PACKAGES).items())), shape_range, bool(refittable))  # fmt: skip

    @classmethod
    def for_spec(
        cls, spec: NetSpec, bucket: Bucket, precision: Precision | str, batch: int, opset: int = DEFAULT_OPSET,
        shape_range: ShapeRange | None = None, refittable: bool = False,
    ) -> ExportKey:  # fmt: skip
        """:meth:`create` for a :class:`pid_trt.netspec.NetSpec` (its config and weights id)."""
        return cls.create(
            spec.config, spec_weights_id(spec), bucket, precision, batch, opset, shape_range, refittable
        )

    @property
    def bucket(self) -> Bucket:
        return Bucket(height=self.height, width=self.width)

    @property
    def config(self) -> NetConfig:
        return NetConfig.from_json(self.net_config)

    def fields(self) -> dict[str, Any]:
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


def _sha(value: str, name: str) -> str:
    value = str(value).lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ConfigError(f"engine key {name}={quote(value)}: expected a sha256 hex digest (64 characters)")
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


def weights_sha256(weights: str) -> str:
    """The engine key's ``checkpoint_sha256`` for an export's weights id
    (:func:`weights_id`): a checkpoint's sha256 as is, else the sha256 of the
    id text (``random:<seed>`` for seeded random weights)."""
    w = weights.lower()
    if len(w) == 64 and all(c in "0123456789abcdef" for c in w):
        return w
    return hashlib.sha256(weights.encode()).hexdigest()


def key_from_manifest(manifest: dict[str, Any]) -> EngineKey:
    """The :class:`EngineKey` a manifest's ``key`` section describes (StoreError if malformed)."""
    k: Any = manifest.get("key")  # JSON, checked as it is read
    if not isinstance(k, dict):
        raise StoreError(f"engine manifest key is a JSON {type(k).__name__}: expected an object")
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
    except (TypeError, KeyError, ValueError, AttributeError, ConfigError) as exc:
        raise StoreError(
            f"engine manifest key is malformed ({type(exc).__name__}: {printable(exc)})"
        ) from None
