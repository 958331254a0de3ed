"""The two option objects every front end takes, each validated in one place.

- :class:`NetOptions`, "which network": backbone, checkpoint type, checkpoint, net config,
  random weights and their seed -> :meth:`NetOptions.resolve` -> :class:`pid_trt.netspec.NetSpec`.
- :class:`RuntimeOptions`, "how to run it": backend, precision, device, artifact stores,
  hoisting, CUDA graphs -> :meth:`RuntimeOptions.resolve` applies the backend's own defaults
  (:mod:`pid_trt.backends.registry`), refuses what it cannot run, and gives the frozen
  :class:`Runtime` everything below the option boundary takes (the backend class, a
  :class:`Precision`, a device string, the store paths).

``Decoder.load``, the server, ``pidtrt bench``, ``verify``, ``generate`` and every CLI command
build these two objects; nothing else re-validates the options.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pid_trt.backends.registry import BackendSpec, check_device, device_kind, parse_precision
from pid_trt.config import Precision
from pid_trt.errors import ConfigError

if TYPE_CHECKING:
    from pid_trt.backends.base import Backend
    from pid_trt.netspec import NetSpec

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class NetOptions:
    """Which network: a preset (``backbone`` + ``ckpt_type``) or a ``net_config`` (JSON path or
    a mapping of upstream ``PidNet`` keyword arguments), with weights from ``checkpoint`` or
    seeded ``random_weights``."""

    backbone: str | None = None
    ckpt_type: str | None = None
    checkpoint: PathLike | None = None
    net_config: PathLike | Mapping[str, Any] | None = None
    random_weights: bool = False
    weights_seed: int = 0

    def resolve(self) -> NetSpec:
        """The resolved :class:`~pid_trt.netspec.NetSpec` (one-line ConfigError when the
        options are contradictory or incomplete)."""
        from pid_trt.netspec import resolve_net

        net_config = self.net_config
        if isinstance(net_config, (str, os.PathLike)):
            net_config = Path(net_config)
        checkpoint = Path(self.checkpoint) if self.checkpoint is not None else None
        return resolve_net(
            self.backbone, self.ckpt_type, checkpoint, net_config, self.random_weights, self.weights_seed
        )

    def absolute(self) -> NetOptions:
        """The same options with file paths made absolute (for another process or folder)."""
        return dataclasses.replace(
            self,
            checkpoint=_absolute(self.checkpoint),
            net_config=self.net_config
            if isinstance(self.net_config, Mapping)
            else _absolute(self.net_config),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields (paths as strings)."""
        d = dataclasses.asdict(self)
        for name in ("checkpoint", "net_config"):
            if isinstance(d[name], os.PathLike):
                d[name] = os.fspath(d[name])
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run the network.

    backend: a registered name, optionally ``NAME[:PRECISION][@DEVICE]``; precision: fp32 |
    fp16 | bf16 | fp8, None = the backend's default on its device; device: cpu | cuda[:n], None
    = the backend's default; engine_dir / export_dir: the artifact stores; hoist: run the
    per-decode work (latent adapter, caption projection) once instead of every step;
    cuda_graph: replay the step as a CUDA graph (backends that support it).
    """

    backend: str = "torch"
    precision: str | Precision | None = None
    device: str | None = None
    engine_dir: PathLike = "engines"
    export_dir: PathLike = "export"
    hoist: bool = True
    cuda_graph: bool = False

    def resolve(self, fallback_device: bool = False) -> Runtime:
        """The one resolution of what the user wrote: the backend's defaults applied and checked
        (:class:`Runtime`). Raises a one-line ConfigError for what the backend cannot take
        (unknown name, precision or device; a device kind it does not run on, unless
        ``fallback_device``: then the backend's own device, and :attr:`Runtime.moved_from` says
        which device was asked for). A precision both in ``backend`` and ``precision`` must agree."""
        spec = BackendSpec.parse(self.backend)
        cls = spec.cls
        device = spec.device or (
            check_device(self.device) if self.device is not None else cls.default_device()
        )
        moved_from = None
        if device_kind(device) not in cls.devices:
            if not fallback_device:
                raise ConfigError(
                    f"--device {device}: the {cls.name} backend runs on {' or '.join(cls.devices)}"
                )
            moved_from, device = device, cls.default_device()
        if spec.precision is not None and self.precision is not None:
            if parse_precision(self.precision) is not spec.precision:
                raise ConfigError(
                    f"--backend {self.backend!r} and --precision {self.precision}: two precisions, pass one"
                )
        precision = spec.precision or (
            parse_precision(self.precision) if self.precision is not None else cls.default_precision(device)
        )
        if precision not in cls.precisions:
            allowed = ", ".join(p.value for p in cls.precisions)
            raise ConfigError(f"--precision {precision.value}: the {cls.name} backend runs {allowed}")
        return Runtime(
            cls, precision, device, Path(self.engine_dir), Path(self.export_dir), self.hoist, self.cuda_graph,
            moved_from,
        )  # fmt: skip

    def absolute(self) -> RuntimeOptions:
        return dataclasses.replace(
            self, engine_dir=os.path.abspath(self.engine_dir), export_dir=os.path.abspath(self.export_dir)
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(self.precision, Precision):
            d["precision"] = self.precision.value
        d["engine_dir"], d["export_dir"] = os.fspath(self.engine_dir), os.fspath(self.export_dir)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RuntimeOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _absolute(path: PathLike | None) -> str | None:
    return None if path is None else os.path.abspath(os.fspath(path))


@dataclass(frozen=True)
class Runtime:
    """Resolved runtime options (:meth:`RuntimeOptions.resolve`): a backend at a precision on a
    device. backend: the registered class (:mod:`pid_trt.backends.registry`); engine_dir /
    export_dir: the artifact stores; hoist / cuda_graph: as :class:`RuntimeOptions`;
    moved_from: the device asked for when a ``fallback_device`` resolution moved it (else None)."""

    backend: type[Backend]
    precision: Precision
    device: str
    engine_dir: Path = Path("engines")
    export_dir: Path = Path("export")
    hoist: bool = True
    cuda_graph: bool = False
    moved_from: str | None = None

    @property
    def name(self) -> str:
        """The backend's registered name."""
        return self.backend.name

    @property
    def label(self) -> str:
        """``name:precision`` (``tensorrt:bf16``)."""
        return f"{self.name}:{self.precision.value}"

    @property
    def where(self) -> str:
        """``name:precision@device`` (``torch:fp32@cpu``)."""
        return f"{self.label}@{self.device}"

    @property
    def moved(self) -> str | None:
        """One line saying the device was moved (a ``fallback_device`` resolution), else None."""
        if self.moved_from is None:
            return None
        return f"{self.label} runs on {self.device}, not {self.moved_from}: moved to {self.device}"

    def unavailable(self) -> str | None:
        """Why this runtime cannot run on this machine (one line), or None (the backend's cheap
        checks, :meth:`pid_trt.backends.base.Backend.unavailable`)."""
        return self.backend.unavailable(self.device, self.precision)

    def on(self, device: str) -> Runtime:
        """The same runtime on ``device`` (a device name already checked)."""
        return dataclasses.replace(self, device=device, moved_from=None)

    def options(self) -> RuntimeOptions:
        """These settings as :class:`RuntimeOptions` (resolving them gives this runtime back)."""
        return RuntimeOptions(
            self.name,
            self.precision,
            self.device,
            self.engine_dir,
            self.export_dir,
            self.hoist,
            self.cuda_graph,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings (:meth:`RuntimeOptions.to_dict`)."""
        return self.options().to_dict()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Runtime:
        return RuntimeOptions.from_dict(data).resolve()


def as_runtime(runtime: RuntimeOptions | Runtime, fallback_device: bool = False) -> Runtime:
    """``runtime`` resolved (:meth:`RuntimeOptions.resolve`), or as given when it already is."""
    return runtime if isinstance(runtime, Runtime) else runtime.resolve(fallback_device)
