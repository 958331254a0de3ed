"""The Triton Python-backend model ``pid_decoder``: runs inside Triton, one process per
model instance, each with its own :class:`pid_trt.Decoder`.

Triton imports this through the model repository :mod:`pid_trt.serve.server` writes
(``pid_decoder/1/model.py`` re-exports :class:`TritonPythonModel`); nothing else imports it.
``execute`` receives the requests Triton's dynamic batcher gathered, decodes them
(:mod:`pid_trt.serve.batch`) and returns at once. Each request gets one response (its
outputs, or its own error). A request that needs no encode (float ``image`` only, or an
error) is answered in the list ``execute`` returns. A request that asks for ``png`` has None
there: its response is sent by its response sender (``request.get_response_sender()``,
flagged ``TRITONSERVER_RESPONSE_COMPLETE_FINAL``, which Triton's default, non-decoupled mode
allows from its Python backend 24.06) from the writer thread that finishes its PNGs, while
Triton already hands this instance the next batch (:mod:`pid_trt.serve.inflight`: a decode
waits while more than 2 PNGs per encoding thread are still unsent, so a burst cannot hold
images without bound). Returning the immediate answers, rather than sending them, lets Triton
record the batch's statistics before those answers reach their clients, as before.
``finalize`` waits for the answers in flight before it closes the decoder.

Outputs and the PNG's encoding: :mod:`pid_trt.serve.protocol` (``png`` is base64 text unless
the request parameter ``png_encoding`` is ``binary``).

Error codes: a malformed request (the project's input / config errors) is INVALID_ARG
(HTTP 400, gRPC INVALID_ARGUMENT); an out-of-memory or a decode that does not fit the device
(ResourceError) is UNAVAILABLE (HTTP 503); anything else INTERNAL (HTTP 500).

Metrics: when this Triton's Python backend has custom metrics (``pb_utils.MetricFamily``),
each instance reports its Decoder's caption cache on Triton's metrics port:
``pid_caption_cache_hits_total`` / ``pid_caption_cache_misses_total`` (counters: prompt rows
answered from the cache / by the caption encoder) and ``pid_caption_cache_entries`` (gauge),
and ``pid_tiled_requests_total`` (counter: requests answered by a tiled decode), labelled
``model`` and ``instance``.

Tiling: each request is planned with the server's ``--tiles ...`` options (``options.json``),
over which the request's parameters ``tiles``, ``tile_size``, ``tile_overlap``, ``tile_batch``
and ``allow_untrained_size`` win (:mod:`pid_trt.serve.protocol`); a tiled request is decoded
on its own (:mod:`pid_trt.serve.batch`).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend

from pid_trt.errors import ConfigError, InputFileError, ResourceError
from pid_trt.io.writer import IMAGES_PER_WRITER, default_writers
from pid_trt.serve.batch import DecodeRequest, DecodeResult, Pending
from pid_trt.serve.config import ModelOptions
from pid_trt.serve.inflight import InFlight, answer_requests
from pid_trt.serve.protocol import encode_pngs, error_text, png_encoding, request_label, request_parameters

#: File in the model directory holding the :class:`ModelOptions` (JSON).
OPTIONS_FILE = "options.json"
#: File in the model directory an instance writes its load error to (one line), for ``pidtrt serve``.
LOAD_ERROR_FILE = "load_error.txt"
#: Seconds ``finalize`` waits for the answers in flight before it closes the decoder.
DRAIN_TIMEOUT_S = 60.0

log = logging.getLogger("pid_trt.serve")


class TritonPythonModel:
    """Triton Python-backend entry points: initialize, execute, finalize."""

    def initialize(self, args: dict) -> None:
        model_dir = Path(args["model_repository"])
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.name = args.get("model_instance_name", "pid_decoder")
        try:
            options = ModelOptions.from_json((model_dir / OPTIONS_FILE).read_text())
            device = None
            if args.get("model_instance_kind") == "GPU":
                device = f"cuda:{int(args['model_instance_device_id'])}"
            if params.get("threads"):
                import torch

                torch.set_num_threads(int(params["threads"]))
            from pid_trt.decoder import Decoder
            from pid_trt.tiling import TileOptions

            self.tiling = TileOptions.create(**options.tiling)
            self.decoder = Decoder.from_options(
                options.net, options.runtime_on(device), **options.decoder_kwargs()
            )
            if self.decoder.runtime.backend.loads_weights_at_start:
                self.decoder.load_weights()  # a bad checkpoint fails the load, before the server reports ready
        except Exception as exc:
            message = error_text(exc)
            try:
                (model_dir / LOAD_ERROR_FILE).write_text(f"{self.name}: {message}\n")
            finally:
                raise
        # The PNGs are encoded on encode_later's pool of default_writers() threads; the writer's bound per thread.
        self.inflight = InFlight(IMAGES_PER_WRITER * default_writers())
        self.metrics = _CacheMetrics.create(self.name, self.decoder)
        self.tiled = _TiledMetric.create(self.name)
        log.info("%s: %r ready", self.name, self.decoder)

    def execute(self, requests: list) -> list:
        """Decode the batch and return at once: the answers that need no encode (float
        ``image`` only, errors) in the returned list, None for each PNG request, which its
        response sender answers (flagged final) from the writer thread that finishes its PNGs
        while Triton hands this instance the next batch (:mod:`pid_trt.serve.inflight`; waits
        first while too many PNGs are still unsent)."""
        responses: list = [None] * len(requests)
        good: list[int] = []
        items: list[DecodeRequest] = []
        sends: list[Callable[[DecodeResult], None]] = []
        encodings: list[str] = []
        for i, request in enumerate(requests):
            try:
                item, encoding = _parse(request)
            except Exception as exc:  # a request Triton let through that we cannot read
                responses[i] = _error_response(exc)
                continue
            good.append(i)
            items.append(item)
            encodings.append(encoding)
            sends.append(functools.partial(_answer, request.get_response_sender(), encoding, item.what))
        pending = answer_requests(
            self.decoder, items, sends, self.inflight, tiling=self.tiling, decoded=self._count
        )
        for i, p, encoding in zip(good, pending, encodings, strict=True):
            if not p.images:
                responses[i] = _response(p.result, encoding)
        return responses

    def _count(self, pending: list[Pending]) -> None:
        """The batch's metrics, updated before any of its answers is sent."""
        if self.tiled is not None:
            self.tiled.add(sum(p.result.tiled and p.result.error is None for p in pending))
        if self.metrics is not None:
            self.metrics.update()

    def finalize(self) -> None:
        inflight = getattr(self, "inflight", None)
        if inflight is not None and not inflight.drain(DRAIN_TIMEOUT_S):
            log.warning(
                "%s: %d answer(s) still unsent after %.0f s", self.name, inflight.answers, DRAIN_TIMEOUT_S
            )
        decoder = getattr(self, "decoder", None)
        if decoder is not None:
            decoder.close()


def _answer(sender, encoding: str, what: str, result: DecodeResult) -> None:
    """Send ``result`` as the request's one response through its response sender."""
    _send(sender, _response(result, encoding), what)


def _response(result: DecodeResult, encoding: str):
    """The request's one response: its outputs (``encoding``: the PNG's, base64 or binary), or
    its error (also when the outputs cannot be built)."""
    if result.error is not None:
        return _error_response(result.error)
    try:
        tensors = []
        if result.image is not None:
            tensors.append(pb_utils.Tensor("image", np.ascontiguousarray(result.image, dtype=np.float32)))
        if result.png is not None:
            png = np.empty((len(result.png), 1), dtype=object)
            png[:, 0] = encode_pngs(result.png, encoding)
            tensors.append(pb_utils.Tensor("png", png))
        return pb_utils.InferenceResponse(output_tensors=tensors)
    except Exception as exc:
        return _error_response(exc)


def _send(sender, response, what: str) -> None:
    """The request's one response, flagged final (Triton's default mode through the response
    sender). A send Triton refuses (the client gone, the server stopping) is logged."""
    try:
        sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    except Exception as exc:
        log.error("%s: answer not sent (%s)", what, " ".join(str(exc).split()))


def _parse(request) -> tuple[DecodeRequest, str]:
    """A Triton request as a DecodeRequest, and the PNG encoding it asks for."""

    def get(name: str) -> np.ndarray | None:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    rid = request.request_id()
    what = request_label(rid)
    params = request.parameters()
    encoding = png_encoding(params, what)
    tiling = request_parameters(params)  # read by TileOptions.from_params, over the server's
    latent = get("latent")
    if latent is None:  # Triton lets a request without it through (the model has optional inputs)
        raise InputFileError(f"{what}: no input 'latent'; expected FP32 [B, C, h, w], the latent to decode")
    prompt = get("prompt")
    prompts = None
    if prompt is not None:
        prompts = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in prompt.reshape(-1)]
    # Triton lists every output when the request lists none (KServe v2: all outputs).
    wanted = frozenset(request.requested_output_names()) or frozenset({"image", "png"})
    return DecodeRequest(
        latent=latent, caption=get("caption_embedding"), prompt=prompts,
        degrade_sigma=get("degrade_sigma"), seed=get("seed"), what=what, outputs=wanted, tiling=tiling,
    ), encoding  # fmt: skip


class _CacheMetrics:
    """The caption cache's counters on Triton's metrics port (custom metrics of the Python
    backend), updated after every batch from the Decoder's :meth:`caption_stats`."""

    def __init__(self, name: str, decoder) -> None:
        family = pb_utils.MetricFamily
        labels = {"model": "pid_decoder", "instance": name}
        self._stats = decoder.caption_stats
        # The families must outlive their metrics: Triton refuses updates of a metric whose family was deleted.
        self._families = [
            family(name=metric, description=text, kind=kind)
            for metric, text, kind in (
                ("pid_caption_cache_hits_total",
                 "Prompt rows answered from the caption-embedding cache (no caption encoder run)", family.COUNTER),
                ("pid_caption_cache_misses_total",
                 "Prompt rows the caption encoder computed (not in the caption-embedding cache)", family.COUNTER),
                ("pid_caption_cache_entries", "Caption embeddings held in the cache now", family.GAUGE),
            )
        ]  # fmt: skip
        self._hits, self._misses, self._entries = (f.Metric(labels=labels) for f in self._families)
        self._seen = (0, 0)

    @classmethod
    def create(cls, name: str, decoder) -> _CacheMetrics | None:
        """The metrics, or None where this Triton has no custom metrics (or the Decoder no cache)."""
        if not hasattr(pb_utils, "MetricFamily"):
            return None
        try:
            return cls(name, decoder)
        except Exception as exc:  # metrics are a report, never a reason not to serve
            log.warning("%s: no caption-cache metrics (%s)", name, " ".join(str(exc).split()))
            return None

    def update(self) -> None:
        try:
            stats = self._stats()
            hits, misses = self._seen
            if stats.hits > hits:
                self._hits.increment(stats.hits - hits)
            if stats.misses > misses:
                self._misses.increment(stats.misses - misses)
            self._entries.set(stats.entries)
            self._seen = (stats.hits, stats.misses)
        except Exception as exc:  # a failed report must not fail the batch's responses
            log.warning("caption-cache metrics not updated (%s)", " ".join(str(exc).split()))


class _TiledMetric:
    """``pid_tiled_requests_total``: requests this instance answered with a tiled decode."""

    def __init__(self, name: str) -> None:
        family = pb_utils.MetricFamily
        self._family = family(  # kept: Triton refuses updates of a metric whose family was deleted
            name="pid_tiled_requests_total",
            description="Requests answered by a tiled decode (outside the trained sizes, or too large for one shot)",
            kind=family.COUNTER,
        )
        self._metric = self._family.Metric(labels={"model": "pid_decoder", "instance": name})

    @classmethod
    def create(cls, name: str) -> _TiledMetric | None:
        """The counter, or None where this Triton has no custom metrics."""
        if not hasattr(pb_utils, "MetricFamily"):
            return None
        try:
            return cls(name)
        except Exception as exc:  # metrics are a report, never a reason not to serve
            log.warning("%s: no tiled-request metric (%s)", name, " ".join(str(exc).split()))
            return None

    def add(self, count: int) -> None:
        try:
            if count:
                self._metric.increment(count)
        except Exception as exc:  # a failed report must not fail the batch's responses
            log.warning("tiled-request metric not updated (%s)", " ".join(str(exc).split()))


def _error_response(exc: Exception):
    if isinstance(exc, (InputFileError, ConfigError, UnicodeDecodeError)):
        code = pb_utils.TritonError.INVALID_ARG
    elif isinstance(exc, ResourceError):
        code = pb_utils.TritonError.UNAVAILABLE
    else:
        code = pb_utils.TritonError.INTERNAL
    message = error_text(exc)
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))
