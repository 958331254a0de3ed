"""ONNX → serialized TensorRT plan, through the TensorRT Python API (no trtexec).

One code path for both flavours (full TensorRT and TensorRT-RTX); the few lines that
differ live in :mod:`pid_trt.trt_flavour`. Networks are strongly typed, so the precision of
an engine is the precision of its ONNX graph: :attr:`BuildOptions.precision` is recorded in
the engine key and manifest, not forced on the builder.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from pid_trt.config import Precision
from pid_trt.errors import ConfigError, EngineBuildError
from pid_trt.trt_flavour import (
    Flavour,
    TrtLogger,
    detect_flavour,
    load_trt,
    network_flags,
    normalise_targets,
    set_targets,
    supports_timing_cache,
)


@dataclass(frozen=True)
class BuildOptions:
    """How to build one engine.

    precision: the graph's precision (strongly typed: recorded, not imposed).
    optimization_level: ``builder_optimization_level``, 0-5 (TensorRT default 3).
    workspace_bytes: limit of the WORKSPACE memory pool in bytes; None = the library default.
    compute_capabilities: TensorRT-RTX targets as ``"major.minor"`` strings; empty = the
        portable default (see :data:`pid_trt.trt_flavour.DEFAULT_RTX_TARGETS`). Full TensorRT
        builds for the GPU present.
    batch_range: (min, opt, max) batch for the optimization profile when the graph's inputs
        have a dynamic batch dimension; ignored for static-shape graphs.
    decomposable_attention: let the builder fall back to unfused attention (matmul, softmax,
        matmul) where it has no fused kernel for an ONNX ``Attention`` node (TensorRT-RTX 1.7
        has none in fp32). Off by default: unfused attention at PiD token counts needs
        O(tokens²) memory (docs/design.md §5), so the build fails with a message instead.
    timing_cache: a timing-cache file to load and update (full TensorRT only); not part of
        the engine key, it changes build time, never the result's validity.
    profile: the optimisation profile of a dynamic-shape graph, ``((input, min, opt, max), ...)``
        with shapes as tuples (:func:`pid_trt.compile.dynamic.profile_shapes`); every input with
        a dynamic dimension must be named. Empty for static graphs (``batch_range`` then covers
        a dynamic batch alone).
    weightless: strip the refittable weights from the plan (``STRIP_PLAN`` with
        ``REFIT_INDIVIDUAL``); ``refit_weights`` names them (the graph's parameters). At load
        the runtime refits them from a checkpoint (:mod:`pid_trt.compile.refit`).
    refit_weights: the ONNX initializer names marked refittable (and so stripped) in a
        weightless build; ignored otherwise.
    """

    precision: Precision = Precision.FP32
    optimization_level: int = 3
    workspace_bytes: int | None = None
    compute_capabilities: tuple[str, ...] = ()
    batch_range: tuple[int, int, int] = (1, 1, 1)
    decomposable_attention: bool = False
    timing_cache: Path | None = field(default=None, compare=False)
    profile: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...] = ()
    weightless: bool = False
    refit_weights: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "profile",
            tuple(
                (str(n), tuple(map(int, lo)), tuple(map(int, opt)), tuple(map(int, hi)))
                for n, lo, opt, hi in self.profile
            ),
        )
        object.__setattr__(self, "refit_weights", tuple(sorted(map(str, self.refit_weights))))
        object.__setattr__(self, "precision", Precision(self.precision))
        object.__setattr__(self, "compute_capabilities", tuple(str(c) for c in self.compute_capabilities))
        object.__setattr__(self, "batch_range", tuple(int(b) for b in self.batch_range))
        if not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"optimization level {self.optimization_level}: expected 0 to 5")
        if self.workspace_bytes is not None and self.workspace_bytes <= 0:
            raise ConfigError(f"workspace limit {self.workspace_bytes} bytes: expected a positive number")
        lo, opt, hi = self.batch_range if len(self.batch_range) == 3 else (0, 0, 0)
        if len(self.batch_range) != 3 or not 1 <= lo <= opt <= hi:
            raise ConfigError(
                f"batch range {self.batch_range}: expected (min, opt, max) with 1 <= min <= opt <= max"
            )

    def targets(self, flavour: Flavour) -> tuple[str, ...]:
        """The compute capabilities a plan with these options is built for on ``flavour``
        (:func:`~pid_trt.trt_flavour.normalise_targets`: fp8 and weightless rules)."""
        return normalise_targets(
            flavour,
            self.compute_capabilities,
            fp8=self.precision is Precision.FP8,
            weightless=self.weightless,
        )

    def key_fields(self) -> dict[str, Any]:
        """The options that invalidate an engine, JSON-ready (timing cache excluded)."""
        out = asdict(self)
        out.pop("timing_cache")
        out["precision"] = self.precision.value
        out["compute_capabilities"] = list(self.compute_capabilities)
        out["batch_range"] = list(self.batch_range)
        for name in ("profile", "weightless", "refit_weights"):  # absent unless used: older keys unchanged
            out.pop(name)
        if self.profile:
            out["profile"] = {n: [list(lo), list(opt), list(hi)] for n, lo, opt, hi in self.profile}
        if self.weightless:
            out["weightless"] = True
            out["refit_weights"] = hashlib.sha256("\n".join(self.refit_weights).encode()).hexdigest()
        return out


@dataclass(frozen=True)
class BuildReport:
    """What one build produced. Sizes in bytes, times in seconds."""

    plan_path: Path
    plan_bytes: int
    build_seconds: float
    flavour: Flavour
    trt_version: str
    compute_capabilities: tuple[str, ...]
    precision: Precision
    dynamic_batch: bool
    attention_layers: int
    warnings: tuple[str, ...] = ()
    dynamic_shapes: bool = False
    refittable_weights: int = 0


class BuildProgress(Protocol):
    """Receives the builder's progress (TensorRT ``IProgressMonitor`` phases and steps).

    Called from TensorRT's threads; ``step`` returning False asks the builder to cancel.
    """

    def phase_start(self, phase: str, parent: str | None, steps: int) -> None: ...

    def step(self, phase: str, step: int) -> bool: ...

    def phase_finish(self, phase: str) -> None: ...


def _progress_monitor(trt: ModuleType, progress: BuildProgress) -> Any:
    """Wrap ``progress`` in a ``trt.IProgressMonitor`` (None where the binding lacks it)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            progress.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return bool(progress.step(phase_name, step))

        def phase_finish(self, phase_name: str) -> None:
            progress.phase_finish(phase_name)

    return Monitor()


def _parser_errors(parser: Any) -> str:
    parts = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = ""
        try:
            name, op = err.node_name(), err.node_operator()
            if name or op:
                where = f"node {name or '#' + str(err.node())} ({op}): "
        except AttributeError:  # older parsers lack node_name / node_operator
            if err.node() >= 0:
                where = f"node #{err.node()}: "
        parts.append(f"{where}{_one_line(err.desc())}")
    return "; ".join(parts)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _attention_layers(trt: ModuleType, network: Any, decomposable: bool) -> int:
    """Count the fused-attention blocks the parser made of ONNX ``Attention`` nodes and,
    if asked, allow each to be decomposed. Returns the count (0 where the API lacks them)."""
    kind = getattr(trt.LayerType, "ATTENTION_INPUT", None)
    if kind is None:
        return 0
    count = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == kind:
            count += 1
            if decomposable:
                layer.__class__ = trt.IAttentionInputLayer  # the bindings' way to down-cast
                layer.attention.decomposable = True
    return count


def _build_failure(flavour: Flavour, onnx_name: str, errors: list[str]) -> EngineBuildError:
    text = _one_line("; ".join(errors[-3:])) or "no detail from the builder"
    if "Attention operation was not supported by a dedicated kernel" in text:
        return EngineBuildError(
            f"TensorRT ({flavour.value}) has no fused attention kernel for an Attention node of {onnx_name} "
            "(fp32 attention is not fused): export attention in fp16/bf16, or build with "
            "decomposable_attention=True (unfused, O(tokens²) memory)"
        )
    return EngineBuildError(f"TensorRT ({flavour.value}) failed to build {onnx_name}: {text[:600]}")


def _add_shape_profile(builder: Any, network: Any, config: Any, profile: tuple) -> None:
    """Add the optimisation profile of a dynamic-shape graph: every input with a dynamic
    dimension gets its (min, opt, max) from ``profile``; their static dimensions must agree."""
    given = {name: (lo, opt, hi) for name, lo, opt, hi in profile}
    prof = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if all(d >= 0 for d in shape):
            continue
        if tensor.name not in given:
            raise ConfigError(
                f"ONNX input {tensor.name!r} shape {shape} is dynamic but the profile does not name it"
            )
        lo, opt, hi = given[tensor.name]
        for corner in (lo, opt, hi):
            if len(corner) != len(shape) or any(
                d >= 0 and d != c for d, c in zip(shape, corner, strict=True)
            ):
                raise ConfigError(
                    f"profile shape {list(corner)} of {tensor.name!r} does not fit its ONNX shape {shape}"
                )
        prof.set_shape(tensor.name, lo, opt, hi)
    config.add_optimization_profile(prof)


def _mark_refittable(network: Any, names: tuple[str, ...]) -> int:
    """Mark ``names`` (ONNX initializer names, as the parser names weights) refittable;
    returns how many the network has. Raises when one is unknown to the network."""
    unknown = [n for n in names if not network.mark_weights_refittable(n)]
    if unknown:
        raise EngineBuildError(
            f"{len(unknown)} weight(s) cannot be marked refittable, e.g. {unknown[0]!r}: re-export the graph"
        )
    return len(names)


def _add_profile(
    trt: ModuleType, builder: Any, network: Any, config: Any, batch: tuple[int, int, int]
) -> bool:
    """Add a batch optimization profile when an input has a dynamic dim 0. Returns True if so."""
    dynamic = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        for axis, dim in enumerate(shape):
            if dim < 0 and axis != 0:
                raise ConfigError(
                    f"ONNX input {tensor.name!r} shape {shape}: only the batch dimension (0) may be dynamic; "
                    "export one graph per resolution bucket"
                )
        if shape and shape[0] < 0:
            dynamic.append((tensor.name, shape))
    if not dynamic:
        return False
    profile = builder.create_optimization_profile()
    for name, shape in dynamic:
        rest = tuple(shape[1:])
        profile.set_shape(name, (batch[0], *rest), (batch[1], *rest), (batch[2], *rest))
    config.add_optimization_profile(profile)
    return True


def _load_timing_cache(config: Any, path: Path | None) -> Any:
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _write_bytes(path: Path, data: Any) -> None:
    """Write ``data`` (bytes or a buffer) to ``path`` and fsync it."""
    with open(path, "wb") as f:
        f.write(memoryview(data))
        f.flush()
        os.fsync(f.fileno())


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    options: BuildOptions = BuildOptions(),
    flavour: Flavour | str = "auto",
    progress: BuildProgress | None = None,
) -> BuildReport:
    """Parse ``onnx_path`` (external data beside it is found by the parser), build a plan,
    write it to ``plan_path`` (fsynced; the caller renames it into place).

    Raises :class:`EngineBuildError` with the parser's errors (node name and op) or the
    builder's, :class:`ConfigError` for bad options, and
    :class:`~pid_trt.errors.BackendUnavailableError` when the flavour is not installed.
    ``progress`` (optional) receives the builder's phases where the binding has
    ``IProgressMonitor``; returning False from its ``step`` cancels the build.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise ConfigError(f"ONNX file {onnx_path}: not found")
    flavour = detect_flavour(flavour)
    trt = load_trt(flavour)
    targets = options.targets(flavour)
    start = time.perf_counter()

    logger = TrtLogger(trt)
    builder, network, parser = _parse_network(trt, flavour, onnx_path, logger)
    attention = _attention_layers(trt, network, options.decomposable_attention)
    config, dynamic, refittable = _builder_config(trt, flavour, builder, network, options, targets)
    cache = None
    if supports_timing_cache(flavour) and options.timing_cache is not None:
        cache = _load_timing_cache(config, Path(options.timing_cache))
    size = _build_plan(trt, builder, network, config, progress, plan_path, logger, flavour, onnx_path.name)
    del parser  # it owns the parsed weights: kept alive until the plan is written
    if cache is not None:
        tmp = Path(f"{options.timing_cache}.tmp{os.getpid()}")
        _write_bytes(tmp, cache.serialize())
        os.replace(tmp, options.timing_cache)

    return BuildReport(
        plan_path=plan_path,
        plan_bytes=size,
        build_seconds=time.perf_counter() - start,
        flavour=flavour,
        trt_version=str(trt.__version__),
        compute_capabilities=targets,
        precision=options.precision,
        dynamic_batch=dynamic,
        attention_layers=attention,
        warnings=tuple(logger.warnings),
        dynamic_shapes=bool(options.profile),
        refittable_weights=refittable,
    )


def _parse_network(trt: ModuleType, flavour: Flavour, onnx_path: Path, logger: Any) -> tuple[Any, Any, Any]:
    """(builder, network, parser) of ``onnx_path``; raises EngineBuildError with the parser's errors.
    The parser owns the parsed weights: keep it alive until the plan is built."""
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, flavour))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        detail = _parser_errors(parser) or _one_line("; ".join(logger.errors)) or "no detail"
        raise EngineBuildError(f"TensorRT ({flavour.value}) cannot parse {onnx_path.name}: {detail}")
    return builder, network, parser


def _builder_config(
    trt: ModuleType, flavour: Flavour, builder: Any, network: Any, options: BuildOptions, targets: tuple
) -> tuple[Any, bool, int]:
    """The builder config of ``options`` (optimisation level, workspace, targets, shape or batch
    profile, weightless flags). Returns (config, whether the batch is dynamic, refittable weights)."""
    config = builder.create_builder_config()
    config.builder_optimization_level = options.optimization_level
    if options.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    set_targets(trt, flavour, config, targets)
    if options.profile:
        _add_shape_profile(builder, network, config, options.profile)
        dynamic = options.batch_range[0] != options.batch_range[2]
    else:
        dynamic = _add_profile(trt, builder, network, config, options.batch_range)
    refittable = 0
    if options.weightless:
        if not options.refit_weights:
            raise ConfigError("weightless build: no weights named to strip (export the graph refittable)")
        config.set_flag(trt.BuilderFlag.REFIT_INDIVIDUAL)
        config.set_flag(trt.BuilderFlag.STRIP_PLAN)
        refittable = _mark_refittable(network, options.refit_weights)
    return config, dynamic, refittable


def _build_plan(
    trt: ModuleType,
    builder: Any,
    network: Any,
    config: Any,
    progress: BuildProgress | None,
    plan_path: Path,
    logger: Any,
    flavour: Flavour,
    onnx_name: str,
) -> int:
    """Build the serialized plan and write it to ``plan_path`` (fsynced); returns its bytes."""
    monitor = _progress_monitor(trt, progress) if progress is not None else None
    if monitor is not None and hasattr(config, "progress_monitor"):
        config.progress_monitor = monitor
    plan = builder.build_serialized_network(network, config)
    if plan is None or plan.nbytes == 0:
        raise _build_failure(flavour, onnx_name, logger.errors)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    _write_bytes(plan_path, plan)
    return int(plan.nbytes)
