"""What this machine has, gathered once into frozen dataclasses (``pidtrt doctor``).

Everything here reads the machine: CPU and memory (``/proc``), torch and its CUDA devices,
the TensorRT flavours (imported only to read their version and targets), ONNX Runtime's
providers, the optional extras (distribution metadata, nothing imported), and the engine
store (manifests only, :mod:`pid_trt.stores.listing`). The judgement is elsewhere
(:mod:`pid_trt.doctor.verdicts`, a pure function of these facts), so the decisions for other
machines are tested by writing their facts as data.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from pid_trt.resources import cpu_model, meminfo_bytes

#: Optional extras: (distribution, import name, the pip extra that installs it, what it is for).
EXTRAS: tuple[tuple[str, str, str, str], ...] = (
    ("onnxruntime", "onnxruntime", "cpu", "the onnxruntime backend"),
    ("transformers", "transformers", "text", "captions from a prompt (Gemma-2-2B-it)"),
    ("diffusers", "diffusers", "diffusers", "pidtrt generate / encode-image"),
    ("nvidia-pytriton", "pytriton", "serve", "pidtrt serve"),
    ("tritonclient", "tritonclient", "serve", "pidtrt request / decode --server"),
    ("nvidia-modelopt", "modelopt", "fp8", "building fp8 engines (ModelOpt calibration)"),
)


@dataclass(frozen=True)
class GpuFacts:
    """One CUDA device: ``cc`` its compute capability ``"major.minor"``; bytes."""

    index: int
    name: str
    cc: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class FlavourFacts:
    """A TensorRT flavour: ``version`` None when it is not installed; ``targets``: the compute
    capabilities it can build for (TensorRT-RTX: its ``ComputeCapability`` list; full
    TensorRT: empty, it builds for the GPU it runs on)."""

    flavour: str
    version: str | None
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExtraFacts:
    """An optional dependency: distribution, the pip extra, what it is for, version or None."""

    distribution: str
    extra: str
    purpose: str
    version: str | None


@dataclass(frozen=True)
class EngineFacts:
    """One engine store entry, from its manifest: ``key`` the manifest's key (net config,
    size or range, batch range, precision, flavour, targets, weights), ``graph`` prepare or
    step, ``status`` ok | stale | corrupt with ``reason``."""

    digest: str
    graph: str
    key: dict
    size_bytes: int
    status: str
    reason: str = ""


@dataclass(frozen=True)
class StoreFacts:
    """The engine store folder and its entries."""

    path: str
    exists: bool
    engines: tuple[EngineFacts, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(e.size_bytes for e in self.engines)


@dataclass(frozen=True)
class OutputFacts:
    """The encoders behind output files: ``isal``, python-isal's version (the default PNG's
    deflater, :func:`pid_trt.io.encoders.png_deflater`; None: zlib's, ~3x slower);
    ``torchvision``, its version where it imports (JPEGs of CUDA decodes by nvJPEG,
    :func:`pid_trt.io.encoders.jpeg_engine_on`; None: libjpeg-turbo on the CPU)."""

    isal: str | None = None
    torchvision: str | None = None


@dataclass(frozen=True)
class MachineFacts:
    """Everything :func:`gather` reads. Memory in bytes (``memory_available``: what a CPU
    decode may use, :func:`pid_trt.resources.available_memory`); ``torch_cuda``: the CUDA
    version torch was built with (None: a CPU build); ``ort_providers``: empty when ONNX
    Runtime is not installed."""

    cpu_count: int
    cpu_model: str
    memory_total: int
    memory_available: int
    torch_version: str
    torch_cuda: str | None
    gpus: tuple[GpuFacts, ...]
    tensorrt: FlavourFacts
    tensorrt_rtx: FlavourFacts
    ort_version: str | None
    ort_providers: tuple[str, ...]
    extras: tuple[ExtraFacts, ...]
    store: StoreFacts
    platform: str = field(default="")
    outputs: OutputFacts = field(default=OutputFacts())

    def gpu(self, index: int) -> GpuFacts | None:
        return next((g for g in self.gpus if g.index == index), None)


def gather(engine_dir: str | os.PathLike[str] = "engines") -> MachineFacts:
    """The facts of this machine (imports torch; the TensorRT flavours only to read them)."""
    import torch

    from pid_trt.resources import available_memory

    avail = available_memory("cpu")
    ort_version, providers = _onnxruntime()
    return MachineFacts(
        cpu_count=os.cpu_count() or 1,
        cpu_model=cpu_model(),
        memory_total=meminfo_bytes("MemTotal") or 0,
        memory_available=avail.free_bytes if avail is not None else 0,
        torch_version=str(torch.__version__),
        torch_cuda=torch.version.cuda,
        gpus=_gpus(),
        tensorrt=_flavour("tensorrt"),
        tensorrt_rtx=_flavour("tensorrt-rtx"),
        ort_version=ort_version,
        ort_providers=providers,
        extras=_extras(),
        store=_store(Path(engine_dir)),
        platform=f"{platform.system()} {platform.machine()}",
        outputs=_outputs(),
    )


def _gpus() -> tuple[GpuFacts, ...]:
    import torch

    if not torch.cuda.is_available():
        return ()
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        out.append(GpuFacts(i, props.name, f"{props.major}.{props.minor}", int(total), int(free)))
    return tuple(out)


def _flavour(name: str) -> FlavourFacts:
    from pid_trt.trt_flavour import Flavour, load_trt

    flavour = Flavour(name)
    try:
        trt = load_trt(flavour)
    except Exception:  # not installed, or a broken install (its libraries missing): absent
        return FlavourFacts(name, None)
    targets: tuple[str, ...] = ()
    if flavour is Flavour.TENSORRT_RTX:
        members = getattr(getattr(trt, "ComputeCapability", None), "__members__", {})
        targets = tuple(f"{m[2:-1]}.{m[-1]}" for m in members if m.startswith("SM") and m[2:].isdigit())
    return FlavourFacts(name, str(getattr(trt, "__version__", "?")), targets)


def _onnxruntime() -> tuple[str | None, tuple[str, ...]]:
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return None, ()
    try:
        import onnxruntime
    except Exception:  # a broken install counts as absent: the doctor reports, never crashes
        return None, ()
    return str(onnxruntime.__version__), tuple(onnxruntime.get_available_providers())


def _extras() -> tuple[ExtraFacts, ...]:

    out = []
    for dist, module, extra, purpose in EXTRAS:
        version = _importable_version(dist, module)
        if version is None and dist == "onnxruntime":
            version = _importable_version("onnxruntime-gpu", module)
        out.append(ExtraFacts(dist, extra, purpose, version))
    return tuple(out)


def _importable_version(dist: str, module: str) -> str | None:
    """The installed version of distribution ``dist`` when its ``module`` can be found (its
    metadata alone may be left behind by an uninstall), else None."""
    import importlib.util

    from pid_trt.versions import package_versions

    version = package_versions([dist]).get(dist)
    return version if version is not None and importlib.util.find_spec(module) is not None else None


def _outputs() -> OutputFacts:
    """The versions of the optional encoder packages found here."""
    return OutputFacts(_importable_version("isal", "isal"), _importable_version("torchvision", "torchvision"))


def _store(root: Path) -> StoreFacts:
    from pid_trt.stores.store import EngineStore, engine_status

    if not root.is_dir():
        return StoreFacts(str(root), False)
    engines = []
    for entry in EngineStore(root).list():
        status, reason = engine_status(entry)
        key = entry.manifest.get("key") if isinstance(entry.manifest.get("key"), dict) else {}
        build = entry.manifest.get("build") if isinstance(entry.manifest.get("build"), dict) else {}
        engines.append(
            EngineFacts(
                entry.digest, str(build.get("graph", "?")), key, entry.size_bytes, status.value, reason
            )
        )
    return StoreFacts(str(root), True, tuple(engines))
