"""The TensorRT backend: the ``prepare`` engine once per decode, the ``step`` engine per step.

Look-up first, CUDA second: :meth:`TrtBackend.from_request` finds the engine pair in the
store (:func:`pid_trt.compile.engine_pair.find_pair`) before it touches CUDA, so a missing, stale
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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pid_trt.backends.base import Backend, Conditioning
from pid_trt.buckets import Bucket
from pid_trt.compile.trt_flavour import Flavour, load_trt
from pid_trt.config import DecoderConfig
from pid_trt.errors import BackendUnavailableError, ConfigError, StoreError
from pid_trt.sampling import TIMESCALE, Denoiser

#: Compute capability majors TensorRT-RTX does not run on (Hopper: H100, H200, GH200).
RTX_UNSUPPORTED_MAJORS = (9,)


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
    """One deserialized plan, its execution context and its bound I/O tensors."""

    def __init__(self, trt: Any, runtime: Any, plan: Path, flavour: Flavour, shared: dict[str, torch.Tensor],
                 graph_strategy: bool = False) -> None:  # fmt: skip
        self.engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise StoreError(f"TensorRT could not deserialize {plan.name}; rebuild it")
        if graph_strategy and flavour is Flavour.TENSORRT_RTX:
            config = self.engine.create_runtime_config()
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            self.context = self.engine.create_execution_context(config)
        else:
            self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailableError(f"TensorRT could not create an execution context for {plan.name}")
        self.tensors: dict[str, torch.Tensor] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ConfigError(
                    f"{plan.name}: tensor {name} has a dynamic shape {shape}; expected static engines"
                )
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(name))
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
            t = shared.get(name)
            if t is None or tuple(t.shape) != shape or t.dtype != dtype:
                t = torch.empty(shape, dtype=dtype, device="cuda")
                shared[name] = t
            self.tensors[name] = t
            self.context.set_tensor_address(name, t.data_ptr())
        self.graph: torch.cuda.CUDAGraph | None = None

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


class TrtBackend(Backend):
    """The prepare + step engine pair of one (net, weights, bucket, precision, batch)."""

    name = "tensorrt"

    def __init__(
        self, pair: Any, config: DecoderConfig, bucket: Bucket, batch: int, cuda_graph: bool = False
    ) -> None:
        from pid_trt.compile.build import _Logger

        flavour = pair.key.flavour
        trt, self.compute_capability = check_runtime(flavour, pair.key.compute_capabilities)
        self.pair, self.config, self.bucket, self.batch = pair, config, bucket, batch
        self.flavour, self.cuda_graph = flavour, cuda_graph
        self._logger = _Logger(trt)  # must outlive the runtime and engines
        self.runtime = trt.Runtime(self._logger)
        free_before = torch.cuda.mem_get_info()[0]
        shared: dict[str, torch.Tensor] = {}
        self.prepare = _Engine(trt, self.runtime, pair.prepare, flavour, shared)
        self.step = _Engine(trt, self.runtime, pair.step, flavour, shared, graph_strategy=cuda_graph)
        torch.cuda.synchronize()
        buffers = sum(t.numel() * t.element_size() for t in shared.values())
        context = self.prepare.context_bytes + self.step.context_bytes
        used = max(0, free_before - torch.cuda.mem_get_info()[0] - buffers - context)
        self.memory = DeviceMemory(engines=used, context=context, buffers=buffers)
        self._captured = False

    @classmethod
    def from_request(cls, request: Any) -> TrtBackend:
        """Find the engine pair of ``request`` (a BackendRequest) in its store, then load it.

        The store is checked before CUDA: missing / stale / foreign engines raise
        :class:`StoreError` (naming the ``pidtrt build`` command) on any machine.
        """
        from pid_trt.compile.engine_pair import build_command, find_pair
        from pid_trt.compile.export import spec_weights_id

        spec, precision = request.spec, request.precision
        bucket = Bucket(height=request.height, width=request.width)
        hint = build_command(spec, bucket, precision, request.batch, request.engine_dir)
        pair = find_pair(
            request.engine_dir, spec.config, spec_weights_id(spec), bucket, precision, request.batch, hint
        )
        return cls(
            pair, spec.config, bucket, request.batch, cuda_graph=bool(getattr(request, "cuda_graph", False))
        )

    def _fill(self, name: str, value: torch.Tensor, what: str) -> None:
        dst = self.prepare.tensors.get(name) if name in self.prepare.tensors else self.step.tensors[name]
        if tuple(value.shape) != tuple(dst.shape):
            raise ConfigError(f"{what} shape {tuple(value.shape)}: this engine pair takes {list(dst.shape)}")
        dst.copy_(value.to(dst.dtype), non_blocking=True)

    def bind(self, cond: Conditioning) -> Denoiser:
        from pid_trt.resources import check_batch_range

        check_batch_range(cond.batch, tuple(self.pair.key.batch_range), f"the {self.bucket.name} engine pair")
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
            return v_out.to(device=x.device, dtype=torch.float32, copy=True)

        return denoise

    def close(self) -> None:
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
