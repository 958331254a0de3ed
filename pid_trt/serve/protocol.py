"""What travels between a KServe v2 client and ``pid_decoder``, beyond the tensors' shapes:
which outputs exist, how the PNG is carried, and the request parameter that chooses it.

Outputs (each computed only when the request asks for it; a request that lists no outputs
gets every output, as KServe v2 says, and Triton gives the model no way to tell the two apart):

- ``image`` FP32 [3, H, W] per row: the decoded image in [-1, 1]. In a JSON answer, numbers.
- ``png`` BYTES [1] per row: the PNG file ``pidtrt decode -o out.png`` writes for that image.
  By default as **base64 text** (ASCII), so that a JSON answer stays valid JSON: Triton's HTTP
  front end writes a BYTES element into the JSON text as it is, and raw PNG bytes are not
  UTF-8. With the request parameter ``png_encoding: "binary"`` the element is the raw PNG
  bytes: ask for that only where the answer is binary (the binary-data extension, i.e.
  ``"binary_data": true`` on the output or ``"binary_data_output": true``; or gRPC).

Triton consumes ``binary_data`` / ``binary_data_output`` itself (the model does not see
them) and this Python backend cannot attach parameters to a response, so the PNG's encoding
is chosen by the client, in the request, and stated in the model configuration's parameters
(:data:`OUTPUT_DOCS`, ``GET /v2/models/pid_decoder/config``). No Triton import here.

A request may also carry its own tiling choice (:data:`TILING_PARAMETERS`: ``tiles``,
``tile_size``, ``tile_overlap``, ``tile_batch``, ``allow_untrained_size``, the keywords of
:meth:`pid_trt.Decoder.decode`), over the server's ``--tiles ...`` defaults, read in one place:
:meth:`pid_trt.tiling.TileOptions.from_params` (a value of the wrong JSON type or a bad value
is a malformed request, HTTP 400).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from pid_trt.errors import InputFileError
from pid_trt.quoting import printable, quote
from pid_trt.tiling.options import REQUEST_PARAMS

#: Request parameter choosing how the ``png`` output is carried.
PNG_ENCODING = "png_encoding"
#: Its values: base64 text (the default, valid in JSON) or the raw PNG bytes (binary answers only).
BASE64, BINARY = "base64", "binary"
PNG_ENCODINGS = (BASE64, BINARY)

#: Request parameters that choose a request's tiling, and the JSON types each may take
#: (:data:`pid_trt.tiling.options.REQUEST_PARAMS`).
TILING_PARAMETERS: dict[str, tuple[type, ...]] = REQUEST_PARAMS

#: Model-configuration parameters describing the outputs and the request parameter (strings).
OUTPUT_DOCS: dict[str, str] = {
    "output_image": (
        "FP32 [3, H, W] per row: the decoded image in [-1, 1] (JSON: numbers, ~4 s of answer per "
        "megapixel beyond the decode: ask for png, or binary_data, for large images)"
    ),
    "output_png": (
        "BYTES [1] per row: the PNG file pidtrt decode writes; base64 text unless the request "
        "parameter png_encoding is binary (then raw bytes: binary-data extension or gRPC only)"
    ),
    "png_encoding": "base64",
    "request_parameters": "png_encoding, " + ", ".join(TILING_PARAMETERS),
}


def request_label(request_id: str | None) -> str:
    """How messages name a request: ``request <id>`` (the client's id, quoted:
    :func:`pid_trt.quoting.printable`, at most 80 characters) or ``request``."""
    return f"request {printable(request_id, 80)}" if request_id else "request"


def error_text(exc: BaseException) -> str:
    """An error's message as a served answer carries it: one line of printable characters
    (white space runs joined, anything else escaped), the type's name when empty."""
    return printable(" ".join(str(exc).split()), 2000) or type(exc).__name__


def request_parameters(parameters: str | dict[str, Any] | None) -> dict[str, Any]:
    """A request's parameters (Triton's Python backend gives a JSON object as text) as a dict."""
    if isinstance(parameters, str):
        try:
            parameters = json.loads(parameters) if parameters.strip() else {}
        except json.JSONDecodeError:
            parameters = {}
    return parameters if isinstance(parameters, dict) else {}


def png_encoding(parameters: str | dict[str, Any] | None, what: str = "request") -> str:
    """The ``png_encoding`` a request asks for (:data:`BASE64` when absent).

    ``parameters``: the request's parameters as Triton's Python backend gives them (a JSON
    object as text), or a dict. Raises InputFileError (a malformed request) naming the value."""
    value = request_parameters(parameters).get(PNG_ENCODING, BASE64)
    if value not in PNG_ENCODINGS:
        raise InputFileError(
            f"{what}: parameter {PNG_ENCODING} {quote(value)}: expected {BASE64!r} (the default, valid in JSON) "
            f"or {BINARY!r} (raw PNG bytes, for binary-data answers and gRPC)"
        )
    return str(value)


def encode_pngs(pngs: Sequence[bytes], encoding: str) -> list[bytes]:
    """The ``png`` output's elements for PNG files ``pngs``: base64 text (as ASCII bytes) or
    the files themselves."""
    if encoding == BINARY:
        return list(pngs)
    return [base64.b64encode(p) for p in pngs]
