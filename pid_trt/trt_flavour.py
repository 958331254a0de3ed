"""The two TensorRT flavours behind one builder: what differs between them, in one place.

``tensorrt`` (full TensorRT) builds on, and for, the NVIDIA GPU of the build machine.
``tensorrt_rtx`` (TensorRT for RTX) builds ahead-of-time on any machine, GPU or not, for a
list of target compute capabilities, and finishes the engine just-in-time on first run.

Neither package is imported at module import time: :func:`load_trt` imports lazily, so
``import pid_trt.trt_flavour`` works without either. Below the stages that use it: the
builder (:mod:`pid_trt.compile.build`), the engine key (:mod:`pid_trt.stores.keys`), the
runtime (:mod:`pid_trt.backends.trt_backend`) and ``pidtrt verify``.
"""

from __future__ import annotations

import ctypes
import importlib
from enum import Enum
from types import ModuleType
from typing import Any

from pid_trt.errors import BackendUnavailableError, ConfigError


class Flavour(str, Enum):
    """Which TensorRT package builds (and later runs) an engine."""

    TENSORRT = "tensorrt"
    TENSORRT_RTX = "tensorrt-rtx"

    @property
    def pip_extra(self) -> str:
        """The pip command that installs this flavour's optional dependency."""
        return "pip install 'pid-trt[tensorrt]'" if self is Flavour.TENSORRT else "pip install 'pid-trt[rtx]'"


# Importable module names, tried in order. The ``tensorrt-rtx-cu12-bindings`` wheel installs
# ``tensorrt_rtx_bindings``; other TensorRT-RTX distributions install ``tensorrt_rtx``.
_MODULES: dict[Flavour, tuple[str, ...]] = {
    Flavour.TENSORRT: ("tensorrt",),
    Flavour.TENSORRT_RTX: ("tensorrt_rtx", "tensorrt_rtx_bindings"),
}

# Compute capabilities a TensorRT-RTX engine targets when the caller names none: the set its
# documentation calls the portable default (Ampere 8.6, Ada 8.9, Blackwell 12.0). Written out
# instead of left to the library so that the engine key says exactly what was built. 8.0 and
# 12.1 can be asked for explicitly; 7.5 (Turing) needs an engine of its own per the RTX docs.
DEFAULT_RTX_TARGETS: tuple[str, ...] = ("8.6", "8.9", "12.0")
#: TensorRT-RTX targets with FP8 tensor cores (Ada SM89, Blackwell SM120); Ampere SM86 has none.
FP8_RTX_TARGETS: tuple[str, ...] = ("8.9", "12.0")


def load_trt(flavour: Flavour) -> ModuleType:
    """Import and return the TensorRT module of ``flavour``.

    Raises :class:`BackendUnavailableError` naming the pip extra when it is not installed.
    """
    flavour = Flavour(flavour)
    last: Exception | None = None
    for name in _MODULES[flavour]:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            last = exc
    raise BackendUnavailableError(
        f"TensorRT flavour {flavour.value!r} is not installed ({last}): run {flavour.pip_extra}"
    )


class TrtLogger:
    """A TensorRT ``ILogger`` of module ``trt`` that keeps the errors and warnings it is sent
    (``.errors``, ``.warnings``: lists of messages as TensorRT wrote them), for error messages.

    ``TrtLogger(trt)`` returns an instance of a ``trt.ILogger`` subclass (the class is made per
    module, since neither TensorRT package is imported here); it must outlive the builders,
    runtimes and engines given it."""

    def __new__(cls, trt: ModuleType) -> Any:
        class Collecting(trt.ILogger):  # type: ignore[name-defined, misc]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.warnings: list[str] = []

            def log(self, severity: Any, msg: str) -> None:
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(msg)
                elif severity == trt.ILogger.Severity.WARNING:
                    self.warnings.append(msg)

        return Collecting()


def is_importable(flavour: Flavour) -> bool:
    """True when :func:`load_trt` would succeed for ``flavour``."""
    try:
        load_trt(flavour)
    except BackendUnavailableError:
        return False
    return True


def _libcuda() -> Any | None:
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if lib.cuInit(0) == 0:
            return lib
        return None
    return None


def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 without a driver or GPU).

    Uses the driver API through ctypes, so neither torch nor TensorRT is imported.
    """
    lib = _libcuda()
    if lib is None:
        return 0
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def cuda_driver_version() -> str | None:
    """The CUDA driver's version as ``"major.minor"`` (e.g. ``12.8``); None without a driver."""
    lib = _libcuda()
    if lib is None:
        return None
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def current_compute_capability(device: int = 0) -> str | None:
    """Compute capability of CUDA device ``device`` as ``"major.minor"``; None without one."""
    lib = _libcuda()
    if lib is None:
        return None
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
    if lib.cuDeviceGetAttribute(ctypes.byref(major), 75, device) != 0:
        return None
    if lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, device) != 0:
        return None
    return f"{major.value}.{minor.value}"


def detect_flavour(requested: str | Flavour = "auto") -> Flavour:
    """Resolve ``'auto' | 'tensorrt' | 'tensorrt-rtx'`` to an installed flavour.

    ``auto`` picks full TensorRT where it is importable and a CUDA GPU is present, else
    TensorRT-RTX. A named flavour that is not installed raises
    :class:`BackendUnavailableError` with the pip extra to install.
    """
    value = requested.value if isinstance(requested, Flavour) else str(requested).strip().lower()
    if value == "auto":
        if is_importable(Flavour.TENSORRT) and cuda_device_count() > 0:
            return Flavour.TENSORRT
        if is_importable(Flavour.TENSORRT_RTX):
            return Flavour.TENSORRT_RTX
        raise BackendUnavailableError(
            "no TensorRT flavour is usable: run pip install 'pid-trt[rtx]' (builds on any machine) "
            "or pip install 'pid-trt[tensorrt]' (needs an NVIDIA GPU)"
        )
    try:
        flavour = Flavour(value)
    except ValueError:
        raise ConfigError(
            f"TensorRT flavour {requested!r}: expected auto, tensorrt or tensorrt-rtx"
        ) from None
    load_trt(flavour)
    return flavour


def flavour_version(flavour: Flavour) -> str:
    """Version string of the installed TensorRT package of ``flavour`` (e.g. ``1.7.1.116``)."""
    return str(load_trt(flavour).__version__)


def normalise_targets(
    flavour: Flavour, targets: tuple[str, ...] | None, fp8: bool = False, weightless: bool = False
) -> tuple[str, ...]:
    """The compute capabilities an engine is built for, as sorted ``"major.minor"`` strings.

    TensorRT-RTX: ``targets`` or :data:`DEFAULT_RTX_TARGETS` (with ``fp8``:
    :data:`FP8_RTX_TARGETS`); each must be one the installed package names
    (``ComputeCapability.SM86`` ...). Full TensorRT builds for the GPU present: its
    capability, which ``targets`` (if given) must equal. With ``fp8`` every target must have
    FP8 tensor cores (8.9 or newer), else ConfigError. With ``weightless`` (refittable plans)
    TensorRT-RTX builds for exactly one target, on a machine with a CUDA GPU: see
    :func:`_weightless_rtx_target`.
    """
    if flavour is Flavour.TENSORRT:
        cc = current_compute_capability()
        if cc is None:
            raise BackendUnavailableError(
                "full TensorRT needs an NVIDIA GPU to build on: use --flavour tensorrt-rtx for a CPU build"
            )
        if targets and tuple(targets) != (cc,):
            raise ConfigError(
                f"compute capabilities {', '.join(targets)}: full TensorRT builds only for the GPU present ({cc})"
            )
        chosen: tuple[str, ...] = (cc,)
    elif weightless:
        chosen = _weightless_rtx_target(targets)
    else:
        chosen = tuple(targets) if targets else (FP8_RTX_TARGETS if fp8 else DEFAULT_RTX_TARGETS)
    for cc in chosen:
        if fp8 and _parse_cc(cc) < (8, 9):
            raise ConfigError(
                f"compute capability {cc}: no FP8 support; expected 8.9 or newer (Ada, Hopper, Blackwell)"
            )
        _parse_cc(cc)
    return tuple(sorted(set(chosen), key=_parse_cc))


def _weightless_rtx_target(targets: tuple[str, ...] | None) -> tuple[str, ...]:
    """The one target of a refittable TensorRT-RTX build. TensorRT-RTX 1.7 compiles a
    refittable (REFIT / STRIP_PLAN) network's kernels at build time: with several targets its
    builder fails (``CHECK(sm_vers_.size() == 1)``), without a CUDA GPU too
    (``graph_jit ... CUDA_SUCCESS``), even for a single MatMul. So: one target, default the GPU
    present, and a GPU to build on."""
    if targets and len(tuple(targets)) != 1:
        raise ConfigError(
            f"compute capabilities {', '.join(targets)}: TensorRT-RTX builds a weightless (refittable) plan for "
            "one target only; give one --target-cc"
        )
    if cuda_device_count() == 0:
        raise BackendUnavailableError(
            "TensorRT-RTX builds weightless (refittable) plans only on a machine with a CUDA GPU (its builder "
            "compiles refittable kernels at build time; a CPU-only build fails): run this build on the RTX "
            "machine, or build without --weightless"
        )
    return tuple(targets) if targets else (current_compute_capability() or "",)


def _parse_cc(cc: str) -> tuple[int, int]:
    try:
        major, minor = (int(p) for p in str(cc).split("."))
    except ValueError:
        raise ConfigError(f"compute capability {cc!r}: expected major.minor, e.g. 8.9") from None
    return major, minor


def network_flags(trt: ModuleType, flavour: Flavour) -> int:
    """``create_network`` flags: strongly typed. TensorRT-RTX networks always are (flag 0)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flavour is Flavour.TENSORRT_RTX or flag is None:  # None: a release where typing is implicit
        return 0
    return 1 << int(flag)


def set_targets(trt: ModuleType, flavour: Flavour, config: Any, targets: tuple[str, ...]) -> None:
    """Tell a TensorRT-RTX builder config which compute capabilities to build for.

    ``IBuilderConfig.num_compute_capabilities`` then ``set_compute_capability(SMxy, i)``.
    Full TensorRT has no such setting (it builds for the GPU present): nothing to do.
    """
    if flavour is not Flavour.TENSORRT_RTX:
        return
    members = trt.ComputeCapability.__members__
    values = []
    for cc in targets:
        major, minor = _parse_cc(cc)
        name = f"SM{major}{minor}"
        if name not in members:
            have = ", ".join(f"{m[2:-1]}.{m[-1]}" for m in members if m.startswith("SM"))
            raise ConfigError(f"compute capability {cc}: TensorRT-RTX {trt.__version__} offers {have}")
        values.append(members[name])
    config.num_compute_capabilities = len(values)
    for i, value in enumerate(values):
        if not config.set_compute_capability(value, i):
            raise ConfigError(f"compute capability {targets[i]}: rejected by TensorRT-RTX {trt.__version__}")


def supports_timing_cache(flavour: Flavour) -> bool:
    """True for full TensorRT. TensorRT-RTX ahead-of-time builds have no tactic timing on
    CPU (its JIT phase keeps a runtime cache instead), so a timing cache is not used there."""
    return flavour is Flavour.TENSORRT
