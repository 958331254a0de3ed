"""The TensorRT backend: the ``prepare`` engine once per decode, the ``step`` engine per step.

Look-up first, CUDA second: :meth:`TrtBackend.from_request` finds the engine pair in the
store (:func:`pid_trt.stores.select.select_pair`) before it touches CUDA, so a missing, stale
or foreign engine is refused with the same one-line error on any machine.

At run time each plan is deserialized once; every I/O tensor is a torch CUDA tensor bound
by name (``set_tensor_address``) for the life of the backend; the step engine's
conditioning inputs are bound straight to the prepare engine's outputs (no copies). Both
engines run with ``execute_async_v3`` on torch's current CUDA stream, so the sampler's torch
ops and the engines are ordered by the stream alone: a 4-step decode whose noise is already
on the GPU runs with no host synchronisation between steps.

CUDA graphs (``cuda_graph=True``): TensorRT-RTX captures the step engine itself
(``IRuntimeConfig.cuda_graph_strategy = WHOLE_GRAPH_CAPTURE``); full TensorRT's step is
captured once into a ``torch.cuda.CUDAGraph`` and replayed (the bound addresses never move).

Dynamic-shape pairs (one engine for a range of sizes): each backend still serves one (size,
batch) -- the input shapes are set once (``set_input_shape``) and the buffers sized for them.
TensorRT-RTX compiles shape-specialised kernels for that shape
(``IRuntimeConfig.dynamic_shapes_kernel_specialization_strategy``, :data:`SPECIALIZATION`)
and keeps them, with the JIT-finished engine, in a runtime cache persisted in the engine store
(:mod:`pid_trt.stores.runtime_cache`), so the next process skips the compilation.

Weightless pairs: each plan is refitted at load from the request's weights (the checkpoint
the user passes, or the random stand-in) before its execution context exists; every weight
the manifest lists is set, ``get_missing_weights`` must come back empty
(:mod:`pid_trt.compile.refit`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pid_trt.backends.base import Artifacts, Backend, Conditioning, GraphKind
from pid_trt.buckets import Bucket
from pid_trt.config import NetConfig, Precision
from pid_trt.errors import BackendUnavailableError, ConfigError, StoreError
from pid_trt.sampling import TIMESCALE, Denoiser
from pid_trt.trt_flavour import Flavour, is_importable, load_trt

if TYPE_CHECKING:
    from pid_trt.backends.factory import BackendRequest
    from pid_trt.model import PidNet
    from pid_trt.netspec import NetSpec
    from pid_trt.stores.select import EnginePair

log = logging.getLogger("pid_trt.backends.trt_backend")

#: Compute capability majors TensorRT-RTX does not run on (Hopper: H100, H200, GH200).
RTX_UNSUPPORTED_MAJORS = (9,)
#: TensorRT-RTX kernel specialisation for dynamic shapes: ``EAGER`` compiles the kernels of a
#: new shape before its first run (a backend serves one shape for many steps and decodes, and
#: the runtime cache keeps them); ``LAZY`` runs fallback kernels while compiling in the
#: background; ``NONE`` never specialises. Overridden by ``$PIDTRT_RTX_SPECIALIZATION``.
SPECIALIZATION = "EAGER"


@dataclass(frozen=True)
class DeviceMemory:
    """Device memory of a loaded backend, in bytes.

    engines: measured drop of free device memory while deserializing both plans (weights and
    kernels); context: the execution contexts' scratch (``device_memory_size_v2``);
    buffers: the bound I/O tensors.
    """

    engines: int
    context: int
    buffers: int

    @property
    def total(self) -> int:
        return self.engines + self.context + self.buffers


def check_runtime(flavour: Flavour, targets: tuple[str, ...]) -> tuple[Any, str]:
    """Raise :class:`BackendUnavailableError` unless this machine can run an engine of ``flavour``
    built for ``targets``; returns (TensorRT module, the GPU's compute capability)."""
    trt = load_trt(flavour)
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"the tensorrt backend needs an NVIDIA GPU with CUDA: torch sees none "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})"
        )
    major, minor = torch.cuda.get_device_capability()
    cc = f"{major}.{minor}"
    name = torch.cuda.get_device_name()
    if flavour is Flavour.TENSORRT_RTX and major in RTX_UNSUPPORTED_MAJORS:
        raise BackendUnavailableError(
            f"TensorRT-RTX engines do not run on Hopper ({name}, sm {cc}): build with "
            "`pidtrt build --builder tensorrt` on this GPU (needs pip install 'pid-trt[tensorrt]')"
        )
    if cc not in targets:
        raise StoreError(
            f"foreign engine refused: built for compute capability {', '.join(targets)}, this GPU ({name}) "
            f"is {cc}; rebuild with --target-cc {cc}"
        )
    return trt, cc


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.BF16: torch.bfloat16,
             trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool}  # fmt: skip
    if dtype not in table:
        raise ConfigError(
            f"engine I/O tensor of TensorRT type {dtype}: not supported by the tensorrt backend"
        )
    return table[dtype]


class _Engine:
    """One deserialized plan (refitted first when weightless), its execution context and its
    bound I/O tensors. ``shapes`` gives every input's shape for a dynamic-shape plan."""

    def __init__(self, trt: Any, runtime: Any, plan: Path, flavour: Flavour, shared: dict[str, torch.Tensor],
                 graph_strategy: bool = False, shapes: dict[str, list[int]] | None = None,
                 refit: dict[str, torch.Tensor] | None = None, cache: Any = None,
                 logger: Any = None) -> None:  # fmt: skip
        self.engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise StoreError(f"TensorRT could not deserialize {plan.name}; rebuild it")
        if refit is not None:
            _refit(trt, self.engine, logger, refit, plan.name)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        dynamic = any(d < 0 for n in names for d in self.engine.get_tensor_shape(n))
        self.cache, self._cache_data = cache, None
        if flavour is Flavour.TENSORRT_RTX and (graph_strategy or dynamic or cache is not None):
            config = self.engine.create_runtime_config()
            if graph_strategy:
                config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            if dynamic:
                strategy = os.environ.get("PIDTRT_RTX_SPECIALIZATION", SPECIALIZATION).upper()
                config.dynamic_shapes_kernel_specialization_strategy = getattr(
                    trt.DynamicShapesKernelSpecializationStrategy, strategy
                )
            if cache is not None:
                self._cache_data = config.create_runtime_cache()
                blob = cache.load()
                if blob and not self._cache_data.deserialize(blob):
                    cache.rejected()
                config.set_runtime_cache(self._cache_data)
            self._config = config  # must outlive the context
            self.context = self.engine.create_execution_context(config)
        else:
            self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailableError(f"TensorRT could not create an execution context for {plan.name}")
        self.tensors: dict[str, torch.Tensor] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        modes = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        for name in sorted(names, key=lambda n: not modes[n]):  # inputs first: they fix output shapes
            shape = tuple(self.engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                if not modes[name]:
                    shape = tuple(self.context.get_tensor_shape(name))
                elif shapes is None or name not in shapes:
                    raise ConfigError(
                        f"{plan.name}: input {name} has a dynamic shape {shape} and none was given"
                    )
                else:
                    shape = tuple(shapes[name])
                    if not self.context.set_input_shape(name, shape):
                        raise ConfigError(
                            f"{plan.name}: input {name} shape {list(shape)} is outside the engine's range"
                        )
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(name))
            (self.inputs if modes[name] else self.outputs).append(name)
            t = shared.get(name)
            if t is None or tuple(t.shape) != shape or t.dtype != dtype:
                t = torch.zeros(shape, dtype=dtype, device="cuda")
                shared[name] = t
            self.tensors[name] = t
            self.context.set_tensor_address(name, t.data_ptr())
        self.graph: torch.cuda.CUDAGraph | None = None

    def save_cache(self) -> None:
        """Write this context's runtime cache back to the engine store (TensorRT-RTX)."""
        if self.cache is not None and self._cache_data is not None:
            self.cache.save(bytes(memoryview(self._cache_data.serialize())))

    @property
    def context_bytes(self) -> int:
        return int(getattr(self.engine, "device_memory_size_v2", 0) or 0)

    def run(self) -> None:
        """Enqueue one execution on torch's current stream (no host synchronisation)."""
        if self.graph is not None:
            self.graph.replay()
            return
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise BackendUnavailableError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def capture(self) -> None:
        """Capture one execution into a torch CUDA graph (full TensorRT; after a warm-up run)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        if hasattr(self.context, "is_stream_capturable") and not self.context.is_stream_capturable(
            stream.cuda_stream
        ):
            raise BackendUnavailableError(
                "this TensorRT engine cannot be captured into a CUDA graph (--cuda-graph)"
            )
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            self.context.execute_async_v3(stream.cuda_stream)
        self.graph = graph


def _refit(trt: Any, engine: Any, logger: Any, tensors: dict[str, torch.Tensor], plan: str) -> None:
    """Refit a weightless ``engine`` with ``tensors`` (ONNX name -> CPU tensor in the graph's
    type); refuses, in one line, a weight the plan rejects or one it still misses."""
    types = {
        torch.float32: trt.DataType.FLOAT,
        torch.float16: trt.DataType.HALF,
        torch.bfloat16: trt.DataType.BF16,
    }
    refitter = trt.Refitter(engine, logger)
    for name, t in tensors.items():
        if not refitter.set_named_weights(name, trt.Weights(types[t.dtype], t.data_ptr(), t.numel())):
            raise StoreError(
                f"refit of {plan} refused weight {name} ({t.dtype}, {list(t.shape)}); rebuild the plan"
            )
    missing = [m for m in refitter.get_missing_weights() if m]
    if missing:
        raise StoreError(
            f"refit of {plan}: {len(missing)} weight(s) not set, e.g. {missing[0]!r}: the checkpoint or the "
            "plan's weight list is incomplete; rebuild the plan"
        )
    if not refitter.refit_cuda_engine():
        raise StoreError(f"refit of {plan} failed (see the TensorRT log); rebuild the plan")


class _Cache:
    """One engine's runtime cache in the store (:mod:`pid_trt.stores.runtime_cache`)."""

    def __init__(
        self, engine_dir: Path, engine_digest: str, flavour: Flavour, trt_version: str, cc: str
    ) -> None:
        from pid_trt.stores.runtime_cache import RuntimeCacheKey, RuntimeCacheStore
        from pid_trt.trt_flavour import cuda_driver_version

        self.store = RuntimeCacheStore(engine_dir)
        self.key = RuntimeCacheKey(
            engine_digest,
            cc,
            torch.cuda.get_device_name(),
            flavour.value,
            trt_version,
            cuda_driver_version() or "?",
        )

    def load(self) -> bytes | None:
        return self.store.load(self.key)

    def rejected(self) -> None:
        log.warning("runtime cache %s rejected by TensorRT-RTX; compiling anew", self.key.label())

    def save(self, data: bytes) -> None:
        if data:
            self.store.save(self.key, data)


class TrtBackend(Backend):
    """The prepare + step engine pair of one (net, weights, bucket, precision, batch)."""

    name = "tensorrt"
    precisions = (Precision.BF16, Precision.FP16, Precision.FP32, Precision.FP8)
    devices = ("cuda",)
    can_unhoist = False
    graph = GraphKind.PLAN

    @classmethod
    def unavailable(cls, device: str, precision: Precision) -> str | None:
        if not torch.cuda.is_available():
            return "TensorRT engines run on an NVIDIA GPU with CUDA; this machine has none"
        if not any(is_importable(f) for f in Flavour):
            return "neither tensorrt nor tensorrt-rtx is installed (pip install 'pid-trt[rtx]')"
        return None

    def __init__(
        self, pair: EnginePair, config: NetConfig, bucket: Bucket, batch: int, cuda_graph: bool = False,
        refit: dict[str, dict[str, torch.Tensor]] | None = None, engine_dir: Path | None = None,
    ) -> None:  # fmt: skip
        from pid_trt.compile.dynamic import io_shapes
        from pid_trt.trt_flavour import TrtLogger

        flavour = pair.key.flavour
        trt, self.compute_capability = check_runtime(flavour, pair.key.compute_capabilities)
        self.pair, self.config, self.bucket, self.batch = pair, config, bucket, batch
        self.flavour, self.cuda_graph = flavour, cuda_graph
        self._logger = TrtLogger(trt)  # must outlive the runtime and engines
        self.runtime = trt.Runtime(self._logger)
        free_before = torch.cuda.mem_get_info()[0]
        shared: dict[str, torch.Tensor] = {}
        shapes = None
        if pair.key.shape_range is not None:
            px = config.pixels_per_latent  # the latent a size decodes from: ceil(size / px) cells
            latent_hw = (-(-bucket.height // px), -(-bucket.width // px))
            shapes = io_shapes(config, bucket.height, bucket.width, batch, latent_hw)
        caches = {}
        if flavour is Flavour.TENSORRT_RTX and engine_dir is not None:
            for graph in ("prepare", "step"):
                digest = str(pair.manifests.get(graph, {}).get("digest", ""))
                if digest:
                    caches[graph] = _Cache(
                        engine_dir, digest, flavour, pair.key.trt_version, self.compute_capability
                    )
        refit = refit or {}
        self.prepare = _Engine(trt, self.runtime, pair.prepare, flavour, shared, shapes=shapes,
                               refit=refit.get("prepare"), cache=caches.get("prepare"), logger=self._logger)  # fmt: skip
        self.step = _Engine(trt, self.runtime, pair.step, flavour, shared, graph_strategy=cuda_graph, shapes=shapes,
                            refit=refit.get("step"), cache=caches.get("step"), logger=self._logger)  # fmt: skip
        self._cache_saved = False
        torch.cuda.synchronize()
        buffers = sum(t.numel() * t.element_size() for t in shared.values())
        context = self.prepare.context_bytes + self.step.context_bytes
        used = max(0, free_before - torch.cuda.mem_get_info()[0] - buffers - context)
        self.memory = DeviceMemory(engines=used, context=context, buffers=buffers)
        self._captured = False

    @classmethod
    def from_request(cls, request: BackendRequest) -> TrtBackend:
        """Find the engine pair of ``request`` (a BackendRequest) in its store, then load it.

        The store is checked before CUDA: missing / stale / foreign engines raise
        :class:`StoreError` (naming the ``pidtrt build`` command) on any machine.
        """
        from pid_trt.stores.keys import spec_weights_id
        from pid_trt.stores.select import build_command, select_pair

        spec, precision = request.spec, request.precision
        bucket = Bucket(height=request.height, width=request.width)
        hint = build_command(spec, bucket, precision, request.batch, request.engine_dir)
        dyn_hint = build_command(spec, None, precision, request.batch, request.engine_dir, dynamic=True)
        pair = select_pair(
            request.engine_dir, spec.config, spec_weights_id(spec), bucket, precision, request.batch, hint,
            dynamic_hint=dyn_hint,
        )  # fmt: skip
        refit = refit_weights(pair, spec, request.load_model) if pair.key.weightless else None
        return cls(
            pair, spec.config, bucket, request.batch, cuda_graph=request.cuda_graph,
            refit=refit, engine_dir=Path(request.engine_dir),
        )  # fmt: skip

    def _fill(self, name: str, value: torch.Tensor, what: str) -> None:
        dst = (self.prepare.tensors if name in self.prepare.tensors else self.step.tensors)[name]
        if tuple(value.shape) != tuple(dst.shape):
            raise ConfigError(f"{what} shape {tuple(value.shape)}: this engine pair takes {list(dst.shape)}")
        dst.copy_(value.to(dst.dtype), non_blocking=True)

    def bind(self, cond: Conditioning) -> Denoiser:
        from pid_trt.resources import check_batch_range

        check_batch_range(cond.batch, self.pair.key.batch_range, f"the {self.bucket.name} engine pair")
        if (cond.height, cond.width) != (self.bucket.height, self.bucket.width):
            raise ConfigError(f"image {cond.width}x{cond.height}: this engine pair is for {self.bucket.name}")
        t_len = self.config.txt_max_length
        self._fill("latent", cond.latent.detach().float(), "latent")
        self._fill("caption", cond.caption.detach().float()[:, :t_len], "caption embedding")
        self._fill("degrade_sigma", cond.degrade_sigma.detach().float().reshape(cond.batch), "degrade_sigma")
        self.prepare.run()
        step = self.step
        x_in, t_in, v_out = step.tensors["x"], step.tensors["t"], step.tensors["velocity"]
        if self.cuda_graph and self.flavour is Flavour.TENSORRT and not self._captured:
            step.run()  # warm-up outside capture (lazy initialisation)
            step.capture()
            self._captured = True

        def denoise(x: torch.Tensor, t: float) -> torch.Tensor:
            x_in.copy_(x, non_blocking=True)
            t_in.fill_(t * TIMESCALE)
            step.run()
            if not self._cache_saved:  # JIT kernels exist after the first run of each engine
                self._save_caches()
            return v_out.to(device=x.device, dtype=torch.float32, copy=True)

        return denoise

    def artifacts(self) -> Artifacts:
        """The plans' size on disk, their builder time (manifests), the device memory held."""
        mib = float(2**20)
        pair = self.pair
        return Artifacts(pair.size_bytes / mib, pair.builder_seconds, self.memory.total / mib)

    def _save_caches(self) -> None:
        self._cache_saved = True
        for eng in (self.prepare, self.step):
            if eng is not None:
                try:
                    eng.save_cache()
                except OSError as exc:  # a read-only store costs compilation time, not the decode
                    log.warning("runtime cache not saved: %s", exc)

    def close(self) -> None:
        if getattr(self, "prepare", None) is not None:
            self._save_caches()
        for attr in ("step", "prepare"):
            eng = getattr(self, attr, None)
            if eng is not None:
                eng.graph = None
                eng.context = None
                eng.engine = None
                setattr(self, attr, None)
        self.runtime = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def refit_weights(
    pair: EnginePair, spec: NetSpec, load_model: Callable[[], PidNet]
) -> dict[str, dict[str, torch.Tensor]]:
    """The tensors a weightless ``pair`` is refitted with, per graph, from ``spec``'s weights
    (``load_model()``: the fp32 model with the checkpoint the user passed). Runs on any machine:
    refuses (one line) a checkpoint that does not fit the plans' architecture key or lacks a
    weight they list, before CUDA is touched."""
    import json

    from pid_trt.compile.refit import check_architecture, refit_tensors

    what = f"checkpoint {spec.checkpoint}" if spec.checkpoint else f"weights of {spec.name}"
    net = json.loads(spec.config.to_json())
    state = load_model().state_dict()
    shapes = {k: list(v.shape) for k, v in state.items()}
    out = {}
    for graph in ("prepare", "step"):
        manifest = pair.manifests.get(graph, {})
        weights = manifest.get("build", {}).get("refit_weights") or []
        check_architecture(manifest.get("key", {}), weights, net, shapes, what)
        out[graph] = refit_tensors(weights, state, what)
    return out
