"""A client of ``pidtrt serve``: KServe v2 over HTTP through ``tritonclient`` (extra ``serve``).

    from pid_trt.serve.client import PidClient

    with PidClient("http://127.0.0.1:8000") as client:
        out = client.decode(latent, caption, seed=7, outputs=("image",))   # latent [B, C, h, w]
        image = out["image"]                                                # [B, 3, H, W] float32
        tiled = client.decode(latent, caption, seed=7, tiles="2x2", tile_size="96x96")

A request's tiling keywords (``tiles``, ``tile_size``, ``tile_overlap``, ``tile_batch``,
``allow_untrained_size``: those of :meth:`pid_trt.Decoder.decode` but ``devices``, which the
server places itself) go as request parameters; those not given are the server's.

Every failure is a :class:`ServeRequestError` with a ``kind``: ``invalid`` (the request was
refused as malformed: the server's one-line message says why), ``overload`` (the server's
queue is full: retry later), ``timeout`` (queued longer than the server's
``--request-timeout-s``, or no answer within the client's ``timeout_s``), ``resource``
(out of memory on the server: that batch failed, the server goes on), ``server`` (any
other server-side failure), ``connection`` (no server there). A client is not shared
between threads: make one per thread.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pid_trt.errors import BackendUnavailableError, ConfigError, PidTrtError
from pid_trt.serve.config import MODEL_NAME
from pid_trt.serve.protocol import BINARY, PNG_ENCODING, TILING_PARAMETERS
from pid_trt.tiling.options import TileOptions

#: Error kinds, in the order reports list them.
ERROR_KINDS = ("invalid", "overload", "timeout", "resource", "server", "connection", "client")


class ServeRequestError(PidTrtError):
    """A request that ended without an image; ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _import_http():
    try:
        import tritonclient.http as http
    except ImportError:
        raise BackendUnavailableError(
            "the pidtrt server client needs the serve extra: pip install 'pid-trt[serve]' (tritonclient[http,grpc])"
        ) from None
    return http


def split_url(url: str) -> tuple[str, bool]:
    """``http://host:port`` / ``https://host:port`` / ``host:port`` -> ("host:port", ssl)."""
    text = url.strip().rstrip("/")
    ssl = text.startswith("https://")
    text = re.sub(r"^https?://", "", text)
    if not text or "/" in text:
        raise PidTrtError(f"--url {url!r}: expected http://HOST:PORT")
    return text, ssl


class PidClient:
    """One connection to a ``pidtrt serve`` server (HTTP). ``timeout_s``: how long one call
    may take, queue and decode included."""

    def __init__(self, url: str, timeout_s: float = 600.0, connect_timeout_s: float = 10.0) -> None:
        http = _import_http()
        self.url = url
        self._address, ssl = split_url(url)
        self._http = http
        self._client = http.InferenceServerClient(
            self._address, connection_timeout=connect_timeout_s, network_timeout=timeout_s, ssl=ssl
        )
        self._timeout_s = timeout_s
        self._params: dict[str, str] | None = None

    # ------------------------------------------------------------------ server facts
    def ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready()) and bool(self._client.is_model_ready(MODEL_NAME))
        except Exception:
            return False

    def parameters(self) -> dict[str, str]:
        """The model's parameters: latent_channels, pixels_per_latent, txt_max_length,
        txt_embed_dim, needs_caption, net, backend, precision."""
        if self._params is None:
            config = self._call(lambda: self._client.get_model_config(MODEL_NAME), "model config")
            self._params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        return self._params

    def stats(self) -> dict[str, Any]:
        """The model's entry of Triton's statistics extension (``/v2/models/pid_decoder/stats``)."""
        doc = self._call(lambda: self._client.get_inference_statistics(MODEL_NAME), "statistics")
        entries = doc.get("model_stats", [])
        return entries[0] if entries else {}

    # ------------------------------------------------------------------ decoding
    def decode(
        self,
        latent: np.ndarray,
        caption: np.ndarray | None = None,
        *,
        prompt: str | Sequence[str] | None = None,
        degrade_sigma: float | np.ndarray = 0.0,
        seed: int = 0,
        outputs: Sequence[str] = ("image",),
        request_id: str = "",
        tiles: str | None = None,
        tile_size: str | None = None,
        tile_overlap: int | None = None,
        tile_batch: int | None = None,
        allow_untrained_size: bool | None = None,
        tiling: Mapping[str, Any] | TileOptions | None = None,
    ) -> dict[str, Any]:
        """Decode one request: ``latent`` [B, C, h, w] (or [C, h, w]); ``caption`` [B, T, D]
        or [T, D]; or ``prompt`` (one string, or B); ``degrade_sigma`` a float or [B] (default 0); one
        ``seed`` for the request (as ``pidtrt decode --seed``). Returns {"image": [B, 3, H, W]
        float32} and / or {"png": [B bytes]}, as ``outputs`` asks.

        ``tiles`` ("auto", "off" or "COLSxROWS"), ``tile_size`` ("WxH", pixels), ``tile_overlap``
        (pixels), ``tile_batch`` (tiles per backend call), ``allow_untrained_size``: this request's
        tiling, as :meth:`pid_trt.Decoder.decode` takes it; None (not given): the server's
        ``pidtrt serve --tiles ...``. ``tiling``: the same as a dict or a :class:`~pid_trt.tiling.TileOptions`
        (see :func:`tiling_parameters`).
        The server checks the values (a bad one: kind ``invalid``). Raises ConfigError for a
        keyword the request cannot carry, ServeRequestError for the server's answers."""
        tiling = tiling_parameters(
            tiling, tiles=tiles, tile_size=tile_size, tile_overlap=tile_overlap, tile_batch=tile_batch,
            allow_untrained_size=allow_untrained_size,
        )  # fmt: skip
        http = self._http
        lat = np.ascontiguousarray(latent, dtype=np.float32)
        if lat.ndim == 3:
            lat = lat[None]
        rows = int(lat.shape[0]) if lat.ndim >= 1 else 1
        inputs = [_input(http, "latent", lat, "FP32")]
        if caption is not None:
            cap = np.ascontiguousarray(caption, dtype=np.float32)
            if cap.ndim == 2:
                cap = np.broadcast_to(cap, (rows, *cap.shape)).copy()
            inputs.append(_input(http, "caption_embedding", cap, "FP32"))
        if prompt is not None:
            texts = [prompt] * rows if isinstance(prompt, str) else list(prompt)
            if len(texts) == 1 and rows > 1:
                texts = texts * rows
            arr = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
            inputs.append(_input(http, "prompt", arr, "BYTES"))
        # degrade_sigma and seed always go, so that requests carry the same inputs: Triton
        # batches only requests whose inputs (names and shapes) match.
        sig = np.asarray(degrade_sigma, dtype=np.float32).reshape(-1)
        if sig.size == 1 and rows > 1:
            sig = np.repeat(sig, rows)
        inputs.append(_input(http, "degrade_sigma", sig.reshape(-1, 1), "FP32"))
        inputs.append(_input(http, "seed", np.full((rows, 1), int(seed), dtype=np.int64), "INT64"))
        wanted = [http.InferRequestedOutput(name, binary_data=True) for name in outputs]
        # Binary answers carry the PNG as it is (the server's default is base64 text, for JSON).
        params = {**tiling, **({PNG_ENCODING: BINARY} if "png" in outputs else {})} or None
        result = self._call(
            lambda: self._client.infer(
                MODEL_NAME, inputs, outputs=wanted, request_id=request_id, parameters=params
            ),
            "infer",
        )
        out: dict[str, Any] = {}
        for name in outputs:
            value = result.as_numpy(name)
            if value is None:
                raise ServeRequestError("server", f"the server's answer has no {name!r} output")
            out[name] = [bytes(v) for v in value.reshape(-1)] if name == "png" else value
        return out

    # ------------------------------------------------------------------ plumbing
    def _call(self, fn, what: str):
        from tritonclient.utils import InferenceServerException

        try:
            return fn()
        except InferenceServerException as exc:
            raise _classify(exc.status(), exc.message() or str(exc)) from None
        except TimeoutError as exc:
            raise ServeRequestError(
                "timeout",
                f"{self.url}: no answer to {what} within {self._timeout_s:g} s ({exc or 'timed out'})",
            ) from None
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise ServeRequestError("connection", f"{self.url}: cannot reach the server ({reason})") from None
        except Exception as exc:  # gevent's Timeout is not an OSError
            if "timeout" in type(exc).__name__.lower():
                raise ServeRequestError(
                    "timeout", f"{self.url}: no answer to {what} within {self._timeout_s:g} s"
                ) from None
            raise

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PidClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tiling_parameters(
    tiling: Mapping[str, Any] | TileOptions | None = None, **keywords: Any
) -> dict[str, Any]:
    """A request's tiling parameters: ``tiling`` (a dict of :data:`TILING_PARAMETERS` names, or a
    :class:`~pid_trt.tiling.TileOptions`: its :meth:`~pid_trt.tiling.TileOptions.to_params`) and
    the ``keywords`` that are not None (the same names), in one dict. Raises ConfigError naming
    a name the server does not read (``devices``: the server places its own devices) or a name
    given twice with two values. The values are the server's to check."""
    out = tiling.to_params() if isinstance(tiling, TileOptions) else dict(tiling or {})
    for name in [*out, *keywords]:
        if name == "devices":
            raise ConfigError(
                "tiling 'devices': a request cannot choose devices, the server places its own "
                "(pidtrt serve --gpus)"
            )
        if name not in TILING_PARAMETERS:
            raise ConfigError(f"tiling {name!r}: expected one of {', '.join(TILING_PARAMETERS)}")
    for name, value in keywords.items():
        if value is None:
            continue
        if name in out and out[name] != value:
            raise ConfigError(f"{name} given twice: {name}={value!r} and tiling[{name!r}] = {out[name]!r}")
        out[name] = value
    return out


def _input(http, name: str, array: np.ndarray, dtype: str):
    tensor = http.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array, binary_data=True)
    return tensor


def _classify(status: str | None, message: str) -> ServeRequestError:
    """A Triton error (HTTP status, message) as a ServeRequestError of the right kind."""
    text = " ".join(re.sub(r"^\[request id: [^\]]*\]\s*", "", message.strip()).split())
    low = text.lower()
    if "maximum queue size" in low:
        return ServeRequestError("overload", f"server overloaded, request refused: {text}")
    if "timeout" in low and ("request" in low or "expired" in low):
        return ServeRequestError("timeout", text)
    if status == "400":
        return ServeRequestError("invalid", text)
    if status == "503" and ("out of memory" in low or "does not fit" in low or "memory" in low):
        return ServeRequestError("resource", text)
    if status is None and ("connect" in low or "refused" in low):
        return ServeRequestError("connection", text)
    return ServeRequestError("server", text)
