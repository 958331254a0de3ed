"""The server's options and the Triton model configuration they become.

Two groups: :class:`ModelOptions`, what every model instance passes to
:meth:`pid_trt.Decoder.load` (the same model options as ``pidtrt decode``), and
:class:`ServeOptions`, Triton's side (addresses, batching, queue, instances). Nothing here
imports Triton: the options are checked, and the model configuration written, in the
``pidtrt serve`` process before ``tritonserver`` starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pid_trt.caption_store import default_store_dir
from pid_trt.errors import ConfigError
from pid_trt.options import NetOptions, RuntimeOptions

if TYPE_CHECKING:
    from pid_trt.netspec import NetSpec

#: The Triton model's name (docs/design.md §7).
MODEL_NAME = "pid_decoder"
#: Caption embeddings each instance keeps (``--caption-cache``): pid_trt.captions.DEFAULT_CAPTION_CACHE,
#: written out so that this module stays free of torch (a test checks the two agree).
CAPTION_CACHE = 32
#: Model-configuration parameters that tell clients the net's input sizes (strings, as Triton keeps them).
NET_PARAMETERS = ("latent_channels", "pixels_per_latent", "txt_max_length", "txt_embed_dim", "needs_caption")


@dataclass(frozen=True)
class ModelOptions:
    """What each model instance passes to :meth:`pid_trt.Decoder.from_options`: the network
    (:class:`~pid_trt.options.NetOptions`) and how to run it
    (:class:`~pid_trt.options.RuntimeOptions`), paths made absolute.

    The runtime's ``device`` is the user's ``--device``; with ``--gpus`` each instance
    decodes on its own ``cuda:<id>`` instead. ``text_encoder``: a local Gemma-2-2B-it
    directory, kept resident once loaded (a server would otherwise reload it for every prompt).
    ``caption_cache``: caption embeddings kept by prompt (:mod:`pid_trt.captions`; 0: none).
    ``tiling``: the tiling keywords of :meth:`pid_trt.Decoder.decode` every request gets unless
    it gives its own (``--tiles ...``; default auto); ``envelope``: the net's trained sizes
    ("WxH,..."; default the checkpoint type's, none for stand-ins). ``null_caption``: the null
    caption file for requests without caption or prompt (``--null-caption``; default
    $PIDTRT_NULL_CAPTION as ``pidtrt serve`` saw it); ``caption_store``: the persistent caption
    store's folder (default $PIDTRT_CAPTION_STORE / the user's cache folder as ``pidtrt serve``
    saw it; "off": none), ``caption_store_max_mb`` its bound.
    """

    net: NetOptions = field(default_factory=NetOptions)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    text_encoder: str | None = None
    text_dtype: str | None = None
    memory_check: bool = True
    max_backends: int = 8
    caption_cache: int = CAPTION_CACHE
    tiling: dict[str, Any] = field(default_factory=dict)
    envelope: str | None = None
    null_caption: str | None = None
    caption_store: str | None = None
    caption_store_max_mb: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "net", self.net.absolute())
        object.__setattr__(self, "runtime", self.runtime.absolute())
        if self.text_encoder is not None:
            object.__setattr__(self, "text_encoder", os.path.abspath(os.fspath(self.text_encoder)))
        # The environment as `pidtrt serve` sees it, written down: instances get the same.
        null = (
            self.null_caption
            if self.null_caption is not None
            else os.environ.get("PIDTRT_NULL_CAPTION") or None
        )
        if null is not None:
            object.__setattr__(self, "null_caption", os.path.abspath(os.fspath(null)))
        store = self.caption_store if self.caption_store is not None else _default_store()
        object.__setattr__(
            self, "caption_store", store if store == "off" else os.path.abspath(os.fspath(store))
        )
        _at_least("--caption-cache", self.caption_cache, 0)

    def decoder_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`pid_trt.Decoder.from_options` beside the two option objects."""
        return {
            "text_encoder": self.text_encoder, "text_dtype": self.text_dtype, "keep_text_encoder": True,
            "caption_cache": self.caption_cache,
            "max_backends": self.max_backends, "memory_check": self.memory_check,
            "memory_hint": "pass --no-memory-check to pidtrt serve to try anyway", "envelope": self.envelope,
            "null_caption": self.null_caption, "caption_store": False if self.caption_store == "off" else self.caption_store,
            "caption_store_max_mb": self.caption_store_max_mb,
        }  # fmt: skip

    def runtime_on(self, device: str | None) -> RuntimeOptions:
        """The runtime options, on ``device`` when given (an instance's own GPU)."""
        return self.runtime if device is None else dataclasses.replace(self.runtime, device=device)

    def to_json(self) -> str:
        data = {
            "net": self.net.to_dict(), "runtime": self.runtime.to_dict(), "text_encoder": self.text_encoder,
            "text_dtype": self.text_dtype, "memory_check": self.memory_check, "max_backends": self.max_backends,
            "caption_cache": self.caption_cache, "tiling": self.tiling, "envelope": self.envelope,
            "null_caption": self.null_caption, "caption_store": self.caption_store,
            "caption_store_max_mb": self.caption_store_max_mb,
        }  # fmt: skip
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelOptions:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)} - {"net", "runtime"}
        return cls(
            NetOptions.from_dict(data.get("net", {})),
            RuntimeOptions.from_dict(data.get("runtime", {})),
            **{k: v for k, v in data.items() if k in known},
        )

    def check(self) -> dict[str, str]:
        """Validate the options as :meth:`pid_trt.Decoder.from_options` does, without reading
        the weights (each instance reads them); returns the net's input sizes for the model
        configuration (:data:`NET_PARAMETERS`), the tiling defaults, the envelope, the device and
        the licence of the weights served (:func:`pid_trt.io.provenance.weights_licence`). Raises
        the project's one-line errors."""
        from pid_trt.io.provenance import weights_licence
        from pid_trt.tiling import Envelope, TileOptions, envelope_for

        runtime = self.runtime.resolve()
        spec = self.net.resolve()
        config = spec.config
        tiling = TileOptions.create(**self.tiling)
        envelope = Envelope.parse(self.envelope) if self.envelope is not None else envelope_for(spec.preset)
        return {
            "latent_channels": str(config.lq_latent_channels),
            "pixels_per_latent": str(config.pixels_per_latent),
            "txt_max_length": str(config.txt_max_length),
            "txt_embed_dim": str(config.txt_embed_dim),
            "needs_caption": "true" if spec.needs_caption else "false",
            "net": spec.name,
            "backend": runtime.name,
            "precision": runtime.precision.value,
            "tiling": tiling.describe(),
            "envelope": envelope.describe(limit=32) if envelope is not None else "none",
            "device": runtime.device,
            "licence": weights_licence(spec)
            or ("none: random weights" if spec.random_weights else "not known: the checkpoint's own"),
            "null_caption": self._null_caption_rule(spec),
        }

    def _null_caption_rule(self, spec: NetSpec) -> str:
        """What requests without caption or prompt get (the model metadata's ``null_caption``);
        the null-caption file is read and checked against the net now (one-line error)."""
        if self.null_caption is not None:
            from pid_trt.io.caption import read_null_caption_file

            read_null_caption_file(self.null_caption, spec.config)
            return f"null ({self.null_caption})"
        if not spec.needs_caption:
            return "random stand-in (random-weight net)"
        if self.text_encoder is not None or os.environ.get("PIDTRT_TEXT_ENCODER"):
            return "null (stored, else encoded by the text encoder)"
        return "null (stored) when the caption store holds one, else refused: pass --null-caption FILE or --text-encoder DIR"


def _default_store() -> str:
    """The caption store's folder by the environment (:func:`pid_trt.caption_store.default_store_dir`);
    "off" for none."""
    folder = default_store_dir()
    return "off" if folder is None else os.fspath(folder)


@dataclass(frozen=True)
class ServeOptions:
    """Triton's side of ``pidtrt serve``.

    max_batch: most images one decode runs (Triton's ``max_batch_size``); requests of one
    size are batched up to it, waiting at most ``max_queue_delay_ms`` for company.
    max_queue_size: requests waiting beyond it are refused at once ("Exceeds maximum queue
    size", HTTP 503), never queued without bound. request_timeout_s: a request still queued
    after this long is refused (None: no limit). devices: GPU ids, one model instance per
    id (each its own Decoder on ``cuda:<id>``); instances: instances per device, or on the
    CPU. threads: torch threads per CPU instance (default: the cores shared out).
    """

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 4
    max_queue_delay_ms: float = 10.0
    max_queue_size: int = 32
    request_timeout_s: float | None = None
    devices: tuple[int, ...] = field(default_factory=tuple)
    instances: int = 1
    threads: int | None = None
    verbose: bool = False

    def __post_init__(self) -> None:
        ports = {
            "--http-port": self.http_port,
            "--grpc-port": self.grpc_port,
            "--metrics-port": self.metrics_port,
        }
        for name, port in ports.items():
            if not 1 <= port <= 65535:
                raise ConfigError(f"{name} {port}: expected a port in 1..65535")
        if len(set(ports.values())) != 3:
            raise ConfigError(
                f"--http-port {self.http_port}, --grpc-port {self.grpc_port}, --metrics-port "
                f"{self.metrics_port}: expected three different ports"
            )
        _at_least("--max-batch", self.max_batch, 1)
        _at_least("--max-queue-size", self.max_queue_size, 1)
        _at_least("--instances", self.instances, 1)
        if self.threads is not None:
            _at_least("--threads", self.threads, 1)
        if not 0 <= self.max_queue_delay_ms <= 60_000:
            raise ConfigError(f"--max-queue-delay-ms {self.max_queue_delay_ms}: expected 0..60000")
        if self.request_timeout_s is not None and not 0 < self.request_timeout_s <= 86_400:
            raise ConfigError(
                f"--request-timeout-s {self.request_timeout_s}: expected a number of seconds > 0"
            )
        if len(set(self.devices)) != len(self.devices) or any(d < 0 for d in self.devices):
            raise ConfigError(f"--gpus {','.join(map(str, self.devices))}: expected distinct GPU ids >= 0")

    @property
    def instance_count(self) -> int:
        """Model instances in all (each one process holding a Decoder)."""
        return self.instances * max(1, len(self.devices))

    def instance_threads(self) -> int | None:
        """torch threads per CPU instance: ``threads``, else the cores shared out when there
        are several instances, else None (torch's default)."""
        if self.threads is not None:
            return self.threads
        if self.devices or self.instances == 1:
            return None
        return max(1, (os.cpu_count() or 1) // self.instances)


def parse_devices(text: str | None) -> tuple[int, ...]:
    """``--gpus 0,1,3`` -> (0, 1, 3); None or "" -> ()."""
    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--gpus {text!r}: expected GPU ids separated by commas, e.g. 0,1") from None


def model_config_pbtxt(serve: ServeOptions, net: dict[str, str]) -> str:
    """The Triton model configuration (protobuf text) of :data:`MODEL_NAME`.

    Inputs per request (batched, leading batch axis implied): ``latent`` [C, h, w] FP32,
    optional ``caption_embedding`` [T, D] FP32, ``prompt`` [1] BYTES, ``degrade_sigma`` [1]
    FP32, ``seed`` [1] INT64; outputs ``image`` [3, H, W] FP32 and ``png`` [1] BYTES (only
    what the request asks for is computed).
    """

    def tensor(name: str, dtype: str, dims: list[int], optional: bool = False) -> str:
        opt = " optional: true" if optional else ""
        return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ]{opt} }}'

    inputs = [
        tensor("latent", "TYPE_FP32", [-1, -1, -1]),
        tensor("caption_embedding", "TYPE_FP32", [-1, -1], optional=True),
        tensor("prompt", "TYPE_STRING", [1], optional=True),
        tensor("degrade_sigma", "TYPE_FP32", [1], optional=True),
        tensor("seed", "TYPE_INT64", [1], optional=True),
    ]
    outputs = [tensor("image", "TYPE_FP32", [3, -1, -1]), tensor("png", "TYPE_STRING", [1])]
    if serve.devices:
        gpus = ", ".join(map(str, serve.devices))
        group = f"  {{ kind: KIND_GPU count: {serve.instances} gpus: [ {gpus} ] }}"
    else:
        group = f"  {{ kind: KIND_CPU count: {serve.instances} }}"
    policy = [f"max_queue_size: {serve.max_queue_size}", "timeout_action: REJECT"]
    if serve.request_timeout_s is not None:
        policy += [
            f"default_timeout_microseconds: {round(serve.request_timeout_s * 1e6)}",
            "allow_timeout_override: true",
        ]
    params = dict(net)
    threads = serve.instance_threads()
    if threads is not None:
        params["threads"] = str(threads)
    parameters = "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}' for k, v in params.items()
    )
    return "\n".join(
        [
            f'name: "{MODEL_NAME}"',
            'backend: "python"',
            f"max_batch_size: {serve.max_batch}",
            "input [",
            ",\n".join(inputs),
            "]",
            "output [",
            ",\n".join(outputs),
            "]",
            "instance_group [",
            group,
            "]",
            "dynamic_batching {",
            f"  max_queue_delay_microseconds: {round(serve.max_queue_delay_ms * 1000)}",
            f"  default_queue_policy {{ {' '.join(policy)} }}",
            "}",
            parameters,
            "",
        ]
    )


def _at_least(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} {value!r}: expected an integer >= {low}")
