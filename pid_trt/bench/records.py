"""Benchmark records: one per backend x size x batch x hoist variant, and their JSON form.

Units are in the field names: ``*_ms`` milliseconds, ``*_s`` seconds, ``*_mb`` MiB
(2**20 bytes), ``images_per_s`` images per second, ``achieved_tflops`` 10**12 FLOP/s.
A record whose backend could not run here has ``status`` ``skipped`` (or ``failed``) and a
one-line ``reason``; its measured fields are None.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pid_trt.errors import ConfigError

#: Version tag of the JSON document written by ``pidtrt bench --json``.
SCHEMA_VERSION = "pid_trt.bench/1"


class Status(str, Enum):
    """Outcome of one benchmark case."""

    OK = "ok"
    SKIPPED = "skipped"  # the backend is not available here (package, GPU, engine missing)
    FAILED = "failed"  # the backend was available but the run raised (e.g. out of memory)


@dataclass(frozen=True)
class Percentiles:
    """Latency percentiles in milliseconds (linear interpolation, as ``numpy.percentile``)."""

    p50: float
    p95: float
    p99: float


@dataclass(frozen=True)
class Environment:
    """Where a figure was measured.

    device: human name ("AMD EPYC (2 cores)", "NVIDIA H100 80GB HBM3"); device_kind: cpu or
    cuda; cpu: CPU model; cores: logical CPUs; driver: NVIDIA driver version or None;
    versions: package -> version (torch, onnxruntime, tensorrt, ...; absent when not installed).
    """

    device: str
    device_kind: str
    cpu: str
    cores: int
    driver: str | None
    versions: dict[str, str]


@dataclass(frozen=True)
class BenchRecord:
    """One benchmark case and what was measured.

    latency_ms: per-decode (bind + all steps) percentiles; step_ms: per denoiser call (p50 is
    the one asked for; p95 / p99 kept); images_per_s: batch x runs / total decode seconds;
    peak_memory_mb: CPU peak RSS of the isolated child process, or GPU peak (torch allocator
    peak + engine memory the backend reports); engine_mb: TensorRT plans or ONNX files;
    build_s: engine build / export / compile seconds when this run made them, else None;
    setup_s: backend construction seconds (load, export or compile); flop_per_decode: cost
    model FLOP of one decode (hoisted or not, as run); achieved_tflops: flop / p50 seconds;
    floor_ms / mfu: roofline floor and model FLOP utilisation on a known GPU (None on CPU and
    for tiled rows). tiling: the tiling options the row ran with ("--tiles 2x2 --tile-batch 2"; None:
    one shot at any size); tiles: the grid of a tiled decode ("COLSxROWS"; None: one shot);
    tile_size: "WxH" pixels; tile_batch: tiles per backend call; tile_count: tile network
    evaluations per step (grid tiles x batch); tile_devices: the devices the tiles ran on.
    """

    backend: str
    precision: str
    height: int
    width: int
    batch: int
    steps: int
    hoisted: bool
    device: str
    device_kind: str
    status: Status
    reason: str | None = None
    warmup: int = 0
    runs: int = 0
    threads: int | None = None
    latency_ms: Percentiles | None = None
    step_ms: Percentiles | None = None
    images_per_s: float | None = None
    peak_memory_mb: float | None = None
    engine_mb: float | None = None
    build_s: float | None = None
    setup_s: float | None = None
    flop_per_decode: float | None = None
    achieved_tflops: float | None = None
    floor_ms: float | None = None
    mfu: float | None = None
    env: Environment | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    tiling: str | None = None
    tiles: str | None = None
    tile_size: str | None = None
    tile_batch: int | None = None
    tile_count: int | None = None
    tile_devices: list[str] | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def label(self) -> str:
        """Short variant name, e.g. ``onnxruntime fp32 no-hoist`` or ``torch fp32 tiles 2x2``."""
        tiled = f" tiles {self.tiles}" if self.tiles else (" one shot" if self.tiling else "")
        return f"{self.backend} {self.precision}" + ("" if self.hoisted else " no-hoist") + tiled

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (enums as their values)."""
        d = dataclasses.asdict(self)
        d["status"] = self.status.value
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchRecord:
        """Inverse of :meth:`to_dict`; raises ConfigError on a malformed record."""
        validate_record(d)
        kw = dict(d)
        kw["status"] = Status(d["status"])
        for key in ("latency_ms", "step_ms"):
            if d.get(key) is not None:
                kw[key] = Percentiles(**d[key])
        if d.get("env") is not None:
            kw["env"] = Environment(**d["env"])
        kw["notes"] = tuple(d.get("notes") or ())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in kw.items() if k in known})


_NUM = (int, float)
#: Required keys of a record and their JSON types (None allowed where the tuple has type(None)).
REQUIRED_KEYS: dict[str, tuple[type, ...]] = {
    "backend": (str,),
    "precision": (str,),
    "height": (int,),
    "width": (int,),
    "batch": (int,),
    "steps": (int,),
    "hoisted": (bool,),
    "device": (str,),
    "status": (str,),
    "reason": (str, type(None)),
    "latency_ms": (dict, type(None)),
    "step_ms": (dict, type(None)),
    "images_per_s": (*_NUM, type(None)),
    "peak_memory_mb": (*_NUM, type(None)),
    "floor_ms": (*_NUM, type(None)),
    "mfu": (*_NUM, type(None)),
    "achieved_tflops": (*_NUM, type(None)),
}

#: JSON Schema (draft 2020-12) of one record, for readers outside Python.
RECORD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "pid_trt benchmark record",
    "type": "object",
    "required": list(REQUIRED_KEYS),
    "properties": {
        "backend": {"type": "string"},
        "precision": {"enum": ["fp32", "fp16", "bf16", "fp8"]},
        "height": {"type": "integer", "minimum": 1},
        "width": {"type": "integer", "minimum": 1},
        "batch": {"type": "integer", "minimum": 1},
        "steps": {"type": "integer", "minimum": 1},
        "hoisted": {"type": "boolean"},
        "device": {"type": "string"},
        "status": {"enum": [s.value for s in Status]},
        "reason": {"type": ["string", "null"]},
        "latency_ms": {
            "type": ["object", "null"],
            "required": ["p50", "p95", "p99"],
            "properties": {k: {"type": "number"} for k in ("p50", "p95", "p99")},
        },
        "step_ms": {"type": ["object", "null"], "required": ["p50"]},
        "images_per_s": {"type": ["number", "null"]},
        "peak_memory_mb": {"type": ["number", "null"]},
        "floor_ms": {"type": ["number", "null"]},
        "mfu": {"type": ["number", "null"]},
        "achieved_tflops": {"type": ["number", "null"]},
    },
}


def validate_record(d: Any) -> None:
    """Raise ConfigError unless ``d`` has every required key with the right JSON type, and a
    measured record (status ok) has its latency, step and throughput figures."""
    if not isinstance(d, dict):
        raise ConfigError(f"benchmark record is {type(d).__name__}: expected an object")
    for key, types in REQUIRED_KEYS.items():
        if key not in d:
            raise ConfigError(f"benchmark record lacks {key!r}")
        value = d[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ConfigError(
                f"benchmark record {key}={value!r}: expected {'/'.join(t.__name__ for t in types)}"
            )
    if d["status"] not in {s.value for s in Status}:
        raise ConfigError(f"benchmark record status={d['status']!r}: expected ok, skipped or failed")
    if d["status"] == Status.OK.value:
        for key in ("latency_ms", "step_ms", "images_per_s", "peak_memory_mb"):
            if d[key] is None:
                raise ConfigError(f"benchmark record with status ok has {key}=None")
        for key in ("p50", "p95", "p99"):
            if not isinstance(d["latency_ms"].get(key), _NUM):
                raise ConfigError(f"benchmark record latency_ms lacks {key!r}")
        if not isinstance(d["step_ms"].get("p50"), _NUM):
            raise ConfigError("benchmark record step_ms lacks 'p50'")
    elif not d["reason"]:
        raise ConfigError(f"benchmark record with status {d['status']} has no reason")


def dump_document(records: list[BenchRecord], meta: dict[str, Any] | None = None) -> str:
    """The ``--json`` document: {"schema", "meta", "records": [...]} as indented JSON text."""
    doc = {"schema": SCHEMA_VERSION, "meta": meta or {}, "records": [r.to_dict() for r in records]}
    return json.dumps(doc, indent=2) + "\n"


def load_document(text: str) -> list[BenchRecord]:
    """Records of a ``--json`` document (raises ConfigError when malformed)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"benchmark JSON is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_VERSION:
        raise ConfigError(f"benchmark JSON: expected schema {SCHEMA_VERSION!r}")
    return [BenchRecord.from_dict(r) for r in doc.get("records", [])]
