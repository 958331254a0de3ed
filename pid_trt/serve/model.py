"""The Triton Python-backend model ``pid_decoder``: runs inside Triton, one process per
model instance, each with its own :class:`pid_trt.Decoder`.

Triton imports this through the model repository :mod:`pid_trt.serve.server` writes
(``pid_decoder/1/model.py`` re-exports :class:`TritonPythonModel`); nothing else imports it.
``execute`` receives the requests Triton's dynamic batcher gathered and returns one response
per request: its outputs, or its own error (:mod:`pid_trt.serve.batch`).

Error codes: a malformed request (the project's input / config errors) is INVALID_ARG
(HTTP 400); an out-of-memory or a decode that does not fit the device (ResourceError) is
UNAVAILABLE (HTTP 503); anything else INTERNAL (HTTP 500).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend

from pid_trt.errors import ConfigError, InputFileError, ResourceError
from pid_trt.serve.batch import DecodeRequest, decode_requests
from pid_trt.serve.config import ModelOptions

#: File in the model directory holding the :class:`ModelOptions` (JSON).
OPTIONS_FILE = "options.json"
#: File in the model directory an instance writes its load error to (one line), for ``pidtrt serve``.
LOAD_ERROR_FILE = "load_error.txt"

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

            self.decoder = Decoder.load(**options.load_kwargs(device))
            load_weights = getattr(self.decoder, "load_weights", None)
            if load_weights is not None and self.decoder.backend_name == "torch":
                load_weights()  # a bad checkpoint fails the load, before the server reports ready
        except Exception as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            try:
                (model_dir / LOAD_ERROR_FILE).write_text(f"{self.name}: {message}\n")
            finally:
                raise
        log.info("%s: %r ready", self.name, self.decoder)

    def execute(self, requests: list) -> list:
        parsed: list[DecodeRequest | None] = []
        errors: dict[int, Exception] = {}
        for i, request in enumerate(requests):
            try:
                parsed.append(_parse(request))
            except Exception as exc:  # a request Triton let through that we cannot read
                errors[i] = exc
                parsed.append(None)
        good = [p for p in parsed if p is not None]
        results = iter(decode_requests(self.decoder, good))
        responses = []
        for i, req in enumerate(parsed):
            if req is None:
                responses.append(_error_response(errors[i]))
                continue
            result = next(results)
            if result.error is not None:
                responses.append(_error_response(result.error))
                continue
            tensors = []
            if result.image is not None:
                tensors.append(pb_utils.Tensor("image", np.ascontiguousarray(result.image, dtype=np.float32)))
            if result.png is not None:
                png = np.empty((len(result.png), 1), dtype=object)
                png[:, 0] = result.png
                tensors.append(pb_utils.Tensor("png", png))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        decoder = getattr(self, "decoder", None)
        if decoder is not None:
            decoder.close()


def _parse(request) -> DecodeRequest:
    def get(name: str) -> np.ndarray | None:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    rid = request.request_id()
    prompt = get("prompt")
    prompts = None
    if prompt is not None:
        prompts = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in prompt.reshape(-1)]
    wanted = frozenset(request.requested_output_names()) or frozenset({"image", "png"})
    return DecodeRequest(
        latent=get("latent"), caption=get("caption_embedding"), prompt=prompts,
        degrade_sigma=get("degrade_sigma"), seed=get("seed"),
        what=f"request {rid}" if rid else "request", outputs=wanted,
    )  # fmt: skip


def _error_response(exc: Exception):
    if isinstance(exc, (InputFileError, ConfigError, UnicodeDecodeError)):
        code = pb_utils.TritonError.INVALID_ARG
    elif isinstance(exc, ResourceError):
        code = pb_utils.TritonError.UNAVAILABLE
    else:
        code = pb_utils.TritonError.INTERNAL
    message = " ".join(str(exc).split()) or type(exc).__name__
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))
