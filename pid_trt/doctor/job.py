"""The job ``pidtrt doctor`` is asked about: a net, an output size, a backend at a precision on
a device, and where its engines would be. Resolved from the command's options with the same
rules (and one-line errors) as ``pidtrt decode``; reads no weights (a named checkpoint is
hashed, as the engine store keys it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pid_trt.backends.registry import GraphKind
from pid_trt.config import NetConfig, Precision, Preset
from pid_trt.errors import ConfigError

#: The placeholder a build command names when no checkpoint was given.
CHECKPOINT_PLACEHOLDER = "model_ema_bf16.pth"


@dataclass(frozen=True)
class Job:
    """What would run. ``backend`` / ``precision`` / ``device``: resolved (``cuda`` means
    ``cuda:0``); ``backend_precisions`` / ``backend_devices`` / ``shares_sizes`` / ``graph``: the
    backend class's own facts (:mod:`pid_trt.backends.registry`). Without a net (``config`` None) only
    the backend is judged. ``weights_sha256``: the engine key's ``checkpoint_sha256`` of the
    weights (None: no checkpoint named for a released net, so engines match on everything
    else); ``height`` / ``width``: output pixels."""

    backend: str
    precision: Precision
    device: str
    backend_precisions: tuple[Precision, ...]
    backend_devices: tuple[str, ...]
    shares_sizes: bool
    graph: GraphKind = GraphKind.TORCH
    net: str | None = None
    config: NetConfig | None = None
    preset: Preset | None = None
    height: int = 0
    width: int = 0
    batch: int = 1
    steps: int = 4
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    weights_sha256: str | None = None
    random_weights: bool = False
    weights_seed: int = 0
    engine_dir: str = "engines"

    @property
    def device_index(self) -> int | None:
        """The CUDA device index (None on the CPU)."""
        if not self.device.startswith("cuda"):
            return None
        return int(self.device[5:]) if self.device.startswith("cuda:") else 0

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.precision.value} on {self.device}"

    def build_command(self, height: int, width: int, batch: int, targets: str | None = None) -> str:
        """The ``pidtrt build`` command of this job's engine pair at one size and batch."""
        from pid_trt.buckets import Bucket
        from pid_trt.stores.select import build_command

        ckpt = self.checkpoint or CHECKPOINT_PLACEHOLDER
        spec = _SpecView(self.preset, self.random_weights, self.weights_seed, ckpt)
        bucket = Bucket(height=height, width=width)
        cmd = build_command(spec, bucket, self.precision, batch, Path(self.engine_dir))
        return cmd + (f" --target-cc {targets}" if targets else "")


@dataclass(frozen=True)
class _SpecView:
    """What :func:`pid_trt.stores.select.build_command` reads of a net spec."""

    preset: Preset | None
    random_weights: bool
    weights_seed: int
    checkpoint: str | None


def resolve_job(
    *,
    backend: str = "torch",
    device: str | None = None,
    backbone: str | None = None,
    ckpt_type: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    net_config: str | os.PathLike[str] | None = None,
    size: str | None = None,
    res: int | None = None,
    batch: int = 1,
    steps: int = 4,
    engine_dir: str | os.PathLike[str] = "engines",
) -> Job:
    """The :class:`Job` of ``pidtrt doctor``'s options (one-line ConfigError for bad ones).

    Size: ``--size WxH`` or ``--res N``, else the checkpoint type's tuning size (2k: 2048x2048,
    2kto4k: 3840x2160; stand-ins 128x128). Weights: ``checkpoint`` (hashed), else seeded
    random weights for stand-ins and ``--net-config`` nets, else none named."""
    from pid_trt.options import RuntimeOptions

    runtime = RuntimeOptions(backend, device=device).resolve()  # the one resolution, as decode's
    cls, precision = runtime.backend, runtime.precision
    dev = "cuda:0" if runtime.device == "cuda" else runtime.device
    if isinstance(batch, bool) or batch < 1 or steps < 1:
        raise ConfigError(f"--batch {batch} / --steps {steps}: expected integers >= 1")
    base = Job(
        cls.name, precision, dev, tuple(cls.precisions), tuple(cls.devices), bool(cls.shares_sizes), cls.graph,
        batch=batch, steps=steps, engine_dir=os.fspath(engine_dir),
    )  # fmt: skip
    if backbone is None and net_config is None and checkpoint is None:
        if ckpt_type is not None or size is not None or res is not None:
            raise ConfigError("--ckpt-type / --size / --res describe a net: add --backbone NAME")
        return base
    return _with_net(base, backbone, ckpt_type, checkpoint, net_config, size, res)


def _with_net(
    base: Job, backbone: str | None, ckpt_type: str | None, checkpoint: Any, net_config: Any,
    size: str | None, res: int | None,
) -> Job:  # fmt: skip
    import dataclasses

    from pid_trt.buckets import default_range, parse_bucket
    from pid_trt.netspec import resolve_net
    from pid_trt.stores.keys import weights_id, weights_sha256

    path = Path(checkpoint) if checkpoint is not None else None
    preset_only = path is None and backbone is not None
    if preset_only:
        from pid_trt.config import get_preset

        preset = get_preset(backbone, ckpt_type)
        config, random = preset.config, not preset.released
    else:
        spec = resolve_net(
            backbone, ckpt_type, path, Path(net_config) if net_config else None, random_weights=path is None
        )
        preset, config, random = spec.preset, spec.config, spec.random_weights
    bucket = (
        parse_bucket(res, size) if (res is not None or size is not None) else default_range(preset).opt_bucket
    )
    ck_sha = wsha = None
    if path is not None:
        from pid_trt.checkpoints import file_sha256

        ck_sha = file_sha256(path)
        wsha = weights_sha256(weights_id(checkpoint_sha256=ck_sha))
    elif random:
        wsha = weights_sha256(weights_id(random_seed=0))
    return dataclasses.replace(
        base, net=preset.name if preset is not None else "custom", config=config, preset=preset,
        height=bucket.height, width=bucket.width, checkpoint=None if path is None else path.name,
        checkpoint_sha256=ck_sha, weights_sha256=wsha, random_weights=random,
    )  # fmt: skip
