"""One batch of server requests -> one image or one error per request.

Triton hands the model the requests its dynamic batcher gathered. Each is checked on its
own, by the latent file's rules (:func:`pid_trt.io.latent_from_tensors`, the words
``pidtrt decode`` prints), so a malformed one fails alone. Each request's size is planned as
``pidtrt decode`` plans it (:meth:`pid_trt.Decoder.plan` with the server's tiling options,
overridden by the request's own): a request the plan tiles is decoded on its own, exactly as
``Decoder.decode(..., tiles=...)`` decodes it; a size refused (``tiles off`` outside the
trained sizes) fails that request alone. The one-shot ones are decoded
together, one :meth:`pid_trt.Decoder.decode` per output size, each request with its own
noise: the draws of ``seed`` for that request's rows (:func:`pid_trt.sampling.draw_noise`),
concatenated on the batch axis. A request therefore gets the image ``pidtrt decode`` gives
for the same latent, seed and backend: bit for bit when it is decoded alone (batch 1), and
within the backend's batch-size rounding when batched with others (torch on the CPU:
~1e-5; the reductions of a matrix product of 4 rows are not grouped as those of 1). A
decode that fails (out of memory, say) fails the requests of its batch only.

PNGs are encoded on the process's writer threads (:func:`pid_trt.io.writer.encode_later`):
a group's while the next group decodes. :func:`decode_requests_later` returns once the last
group is decoded, each request's answer a future resolved when its PNGs are (a failed encode
fails its request alone); :func:`decode_requests` waits for them.

No Triton import here: :mod:`pid_trt.serve.model` turns Triton requests into
:class:`DecodeRequest` and :class:`DecodeResult` back into responses.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pid_trt.errors import ConfigError, InputFileError, PidTrtError
from pid_trt.quoting import printable
from pid_trt.tiling.options import TileMode, TileOptions

if TYPE_CHECKING:
    from pid_trt.decoder import Decoder

log = logging.getLogger("pid_trt.serve")

#: Sampler steps the server runs (the released 4-step distilled sampler).
STEPS = 4


@dataclass
class DecodeRequest:
    """One request's inputs as the server received them (numpy, leading batch axis n).

    latent [n, C, h, w]; caption [n, T, D] or None; prompt: n strings (or 1) or None;
    degrade_sigma [n, 1] or None; seed [n, 1] or None (0, as ``pidtrt decode``); what: the
    name errors start with (``request <id>``); outputs: which of image / png to return;
    tiling: the request's parameters (those of :data:`pid_trt.tiling.options.REQUEST_PARAMS`
    are its tiling, read by :meth:`pid_trt.tiling.TileOptions.from_params`).
    """

    latent: np.ndarray
    caption: np.ndarray | None = None
    prompt: Sequence[str] | None = None
    degrade_sigma: np.ndarray | None = None
    seed: np.ndarray | None = None
    what: str = "request"
    outputs: frozenset[str] = frozenset({"image"})
    tiling: dict[str, Any] = field(default_factory=dict)


@dataclass
class DecodeResult:
    """A request's answer: ``image`` [n, 3, H, W] float32 (when asked), ``png`` n PNG files
    (when asked), or ``error`` (a :class:`~pid_trt.errors.PidTrtError`, one line); ``tiled``:
    whether it was decoded in tiles; ``caption``: the caption's source (prompt, file, null (FILE),
    null (stored), null (encoded), random stand-in: :mod:`pid_trt.caption_choice`)."""

    image: np.ndarray | None = None
    png: list[bytes] | None = None
    error: PidTrtError | None = None
    tiled: bool = False
    caption: str = ""


@dataclass
class _Ready:
    """A validated request, ready to join its size's decode."""

    index: int
    latent: torch.Tensor
    caption: torch.Tensor
    sigma: torch.Tensor
    noise: list[torch.Tensor]
    size: tuple[int, int]
    tiling: TileOptions | None = None  # a tiled request's options; None: one shot
    text: dict[str, str] | None = None  # the PNG's provenance entries (pid_trt.io.provenance)
    source: str = ""  # the caption's source

    @property
    def rows(self) -> int:
        return int(self.latent.shape[0])


def decode_requests(
    decoder: Decoder, requests: Sequence[DecodeRequest], steps: int = STEPS, tiling: TileOptions | None = None
) -> list[DecodeResult]:
    """Decode ``requests`` on ``decoder``; one result per request, in order, PNGs encoded.
    ``tiling``: the server's tiling options (None: the defaults; each request's own parameters
    override them). Never raises for a bad request or a failed decode: those become the
    result's ``error`` (an unexpected exception is logged and named as an internal error)."""
    return [p.answer.result() for p in decode_requests_later(decoder, requests, steps, tiling)]


@dataclass
class Pending:
    """A request's answer while its PNGs are encoded.

    ``result``: the :class:`DecodeResult` (image, tiled, caption, or the request's error) as
    its decode left it; ``answer``: a future of that result once its PNGs are encoded (a failed
    encode sets its ``error``), already resolved when none are; ``images``: the PNGs it waits for.
    """

    result: DecodeResult
    answer: Future[DecodeResult]
    images: int = 0


def decode_requests_later(
    decoder: Decoder, requests: Sequence[DecodeRequest], steps: int = STEPS, tiling: TileOptions | None = None
) -> list[Pending]:
    """Decode ``requests`` as :func:`decode_requests` does, and return as soon as the last
    group is decoded: one :class:`Pending` per request, in order, whose ``answer`` resolves
    (on the writer thread that encodes its last PNG) once its PNGs are encoded. Never raises
    for a bad request, a failed decode or a failed encode (the result's ``error``)."""
    results = [DecodeResult() for _ in requests]
    ready: list[_Ready] = []
    for i, req in enumerate(requests):
        try:
            ready.append(
                _prepare(decoder, i, req, steps, TileOptions.from_params(req.tiling, tiling, req.what))
            )
        except Exception as exc:
            results[i].error = _as_error(exc, req.what)
    # A tiled request alone; one shot: one decode per output size (and caption length: a prompt's
    # embedding keeps the encoder's length, as in Decoder.decode, while a caption_embedding is cut
    # to txt_max_length).
    groups: dict[tuple[int, ...], list[_Ready]] = {}
    for item in ready:
        key = (item.index,) if item.tiling is not None else (*item.size, int(item.caption.shape[1]))
        groups.setdefault(key, []).append(item)
    # Each group's PNGs are encoded on the writer threads while the next group decodes.
    encoding: dict[int, list[Future[bytes]]] = {}
    for items in groups.values():
        encoding.update(_decode_group(decoder, items, requests, results, steps))
    pending = []
    for i, result in enumerate(results):
        pngs = encoding.get(i)
        if pngs is None:
            done: Future[DecodeResult] = Future()
            done.set_result(result)
            pending.append(Pending(result, done))
        else:
            pending.append(Pending(result, _when_encoded(result, pngs, requests[i].what), len(pngs)))
    return pending


def _when_encoded(result: DecodeResult, pngs: list[Future[bytes]], what: str) -> Future[DecodeResult]:
    """A future of ``result`` with its ``png`` filled in (or its ``error`` set, by the first
    failed encode), resolved by whichever thread finishes the last of ``pngs``."""
    answer: Future[DecodeResult] = Future()
    left = [len(pngs)]
    lock = threading.Lock()

    def one_done(_: Future[bytes]) -> None:
        with lock:
            left[0] -= 1
            if left[0]:
                return
        try:
            result.png = [f.result() for f in pngs]
        except Exception as exc:
            result.error = _as_error(exc, what)
        answer.set_result(result)

    for f in pngs:
        f.add_done_callback(one_done)
    return answer


def _decode_group(
    decoder: Decoder, items: list[_Ready], requests, results: list[DecodeResult], steps: int
) -> dict[int, list[Future[bytes]]]:
    """One decode of ``items`` (one tiled request, or one-shot requests of one size); their
    results (or the decode's error for each). Returns the PNGs being encoded, per request
    index. When no request of the group asks for ``image``, the pixels are quantized on the
    decode's device and only they are copied to the host."""
    height, width = items[0].size
    # One-shot requests were planned one by one; together they decode in one shot at any size.
    tiling = items[0].tiling or TileOptions(TileMode.OFF, allow_untrained_size=True)
    floats = any("image" in requests[r.index].outputs for r in items)
    try:
        image = decoder.decode(
            torch.cat([r.latent for r in items]), torch.cat([r.caption for r in items]),
            degrade_sigma=torch.cat([r.sigma for r in items]),
            noise=[torch.cat(draws) for draws in zip(*(r.noise for r in items), strict=True)],
            size=(height, width), steps=steps, tiling=tiling,
            output_dtype=torch.float32 if floats else torch.uint8,
        )  # fmt: skip
    except Exception as exc:
        rows = sum(r.rows for r in items)
        err = _as_error(exc, f"decode of {len(items)} request(s), {rows} image(s) at {width}x{height}")
        for r in items:
            results[r.index].error = err
        return {}
    log.debug("decoded %d request(s), %d image(s) at %dx%d", len(items), image.shape[0], width, height)
    start: int = 0
    encoding: dict[int, list[Future[bytes]]] = {}
    for r in items:
        part = image[start : start + r.rows]
        start += r.rows
        out = results[r.index]
        out.tiled = r.tiling is not None
        out.caption = r.source
        wanted = requests[r.index].outputs
        if "image" in wanted:
            out.image = part.numpy()
        if "png" in wanted:
            try:
                encoding[r.index] = png_futures(part, r.text)
            except Exception as exc:
                out.error = _as_error(exc, requests[r.index].what)
    return encoding


def png_futures(images: torch.Tensor, text: dict[str, str] | None = None) -> list[Future[bytes]]:
    """[n, 3, H, W] float in [-1, 1] (or the uint8 pixels :func:`pid_trt.io.quantize` makes of
    them) -> n PNG files being encoded on the process's writer threads
    (:func:`pid_trt.io.writer.encode_later`), byte for byte what :func:`pid_trt.io.write_images`
    writes for the same images; ``text``: the provenance entries each PNG carries."""
    from pid_trt.io.encoders import OutputFormat, OutputOptions
    from pid_trt.io.images import host_pixels
    from pid_trt.io.writer import encode_later

    if images.is_floating_point() and not bool(torch.isfinite(images).all()):
        raise PidTrtError("decoded images contain NaN/Inf; refusing to encode them as PNG")
    options = OutputOptions()
    return encode_later(host_pixels(images, OutputFormat.PNG, options), OutputFormat.PNG, options, text)


def png_bytes(images: torch.Tensor, text: dict[str, str] | None = None) -> list[bytes]:
    """The n PNG files of :func:`png_futures`, once encoded (in parallel over the batch)."""
    return [f.result() for f in png_futures(images, text)]


def _prepare(decoder: Decoder, index: int, req: DecodeRequest, steps: int, tiling: TileOptions) -> _Ready:
    """Validate one request by the latent file's rules and plan its size (``tiling``: its
    options); its caption and noise."""
    from pid_trt.io import latent_from_tensors
    from pid_trt.sampling import draw_noise

    what = req.what
    rows = int(req.latent.shape[0]) if req.latent.ndim >= 1 else 0
    seed = _request_seed(req.seed, rows, what)
    sigma = None if req.degrade_sigma is None else np.asarray(req.degrade_sigma).reshape(-1)
    if req.prompt is not None and req.caption is not None:
        raise ConfigError(f"{what}: give caption_embedding or prompt, not both")
    lat = latent_from_tensors(req.latent, req.caption, sigma, decoder.config, what=what)
    height, width = decoder.output_size(lat.latent_hw)
    try:
        size_plan = decoder.plan(height, width, lat.batch, steps, tiling=tiling)
    except ConfigError as exc:  # the decode's own words (tiles off outside the envelope, bad devices)
        raise ConfigError(f"{what}: {exc}") from None
    # The rule of every front end (pid_trt.caption_choice): prompt, caption, else the null
    # caption for a net that needs one (a seeded stand-in for random-weight nets, per request).
    prompt = list(req.prompt) if req.prompt is not None else None
    chosen = decoder.choose_caption(lat.batch, lat.caption, prompt, seed)
    noise = draw_noise((lat.batch, 3, height, width), steps, seed)
    tiled = tiling if size_plan.tiled else None
    text = None
    if "png" in req.outputs:
        text = _provenance(decoder, req, lat, seed, steps, size_plan, chosen.source).to_text()
    return _Ready(
        index,
        lat.latent,
        chosen.embedding,
        lat.degrade_sigma,
        noise,
        (height, width),
        tiled,
        text,
        chosen.source,
    )


def _provenance(decoder, req: DecodeRequest, lat, seed: int, steps: int, size_plan, source: str) -> Any:
    """How the server makes a request's images (as ``pidtrt decode`` records a file's)."""
    from pid_trt.io.provenance import caption_kind, for_decode, tiles_text

    return for_decode(
        decoder.spec, decoder.backend_name, decoder.precision, decoder.device, seed=seed, steps=steps,
        height=size_plan.height, width=size_plan.width, degrade_sigma=lat.degrade_sigma.tolist(),
        tiles=tiles_text(size_plan), caption=caption_kind(source, from_file=False), prompt=tuple(req.prompt or ()),
    )  # fmt: skip


def _request_seed(seed: np.ndarray | None, rows: int, what: str) -> int:
    """A request's one seed (rows of a request share it, as a latent file's rows share
    ``pidtrt decode --seed``); 0 when absent."""
    if seed is None:
        return 0
    values = np.asarray(seed).reshape(-1)
    if values.size == 0:
        raise InputFileError(f"{what}: seed is empty, expected one int64 per row")
    if not np.issubdtype(values.dtype, np.integer):
        raise InputFileError(f"{what}: seed has dtype {values.dtype}, expected int64")
    if bool((values != values[0]).any()):
        raise InputFileError(
            f"{what}: seed differs across the {rows} rows of one request ({', '.join(map(str, values[:4]))}"
            f"{' ...' if values.size > 4 else ''}); a request has one seed, as `pidtrt decode --seed`: "
            "send rows with other seeds as other requests"
        )
    return int(values[0])


def _as_error(exc: BaseException, what: str) -> PidTrtError:
    """The project's errors pass as they are; anything else is named as an internal error
    (and logged with its traceback: it is a bug, or a backend failure)."""
    if isinstance(exc, PidTrtError):
        return exc
    log.error("%s: unexpected %s", what, type(exc).__name__, exc_info=exc)
    first = printable(" ".join(str(exc).split()), 400) or type(exc).__name__
    return PidTrtError(f"{what}: internal error ({type(exc).__name__}: {first})")
