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

No Triton import here: :mod:`pid_trt.serve.model` turns Triton requests into
:class:`DecodeRequest` and :class:`DecodeResult` back into responses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pid_trt.errors import ConfigError, InputFileError, PidTrtError
from pid_trt.netspec import stand_in_caption

log = logging.getLogger("pid_trt.serve")

#: Sampler steps the server runs (the released 4-step distilled sampler).
STEPS = 4


@dataclass
class DecodeRequest:
    """One request's inputs as the server received them (numpy, leading batch axis n).

    latent [n, C, h, w]; caption [n, T, D] or None; prompt: n strings (or 1) or None;
    degrade_sigma [n, 1] or None; seed [n, 1] or None (0, as ``pidtrt decode``); what: the
    name errors start with (``request <id>``); outputs: which of image / png to return.
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
    whether it was decoded in tiles."""

    image: np.ndarray | None = None
    png: list[bytes] | None = None
    error: PidTrtError | None = None
    tiled: bool = False


@dataclass
class _Ready:
    """A validated request, ready to join its size's decode."""

    index: int
    latent: torch.Tensor
    caption: torch.Tensor
    sigma: torch.Tensor
    noise: list[torch.Tensor]
    size: tuple[int, int]
    tiling: dict[str, Any] | None = None  # the decode keywords of a tiled request; None: one shot

    @property
    def rows(self) -> int:
        return int(self.latent.shape[0])


def decode_requests(
    decoder, requests: Sequence[DecodeRequest], steps: int = STEPS, tiling: dict[str, Any] | None = None
) -> list[DecodeResult]:
    """Decode ``requests`` on ``decoder`` (a :class:`pid_trt.Decoder`); one result per request,
    in order. ``tiling``: the server's tiling keywords (each request's own override them).
    Never raises for a bad request or a failed decode: those become the result's ``error``
    (an unexpected exception is logged and named as an internal error)."""
    results = [DecodeResult() for _ in requests]
    ready: list[_Ready] = []
    for i, req in enumerate(requests):
        try:
            ready.append(_prepare(decoder, i, req, steps, {**(tiling or {}), **req.tiling}))
        except Exception as exc:
            results[i].error = _as_error(exc, req.what)
    # A tiled request alone; one shot: one decode per output size (and caption length: a prompt's
    # embedding keeps the encoder's length, as in Decoder.decode, while a caption_embedding is cut
    # to txt_max_length).
    groups: dict[tuple[int, ...], list[_Ready]] = {}
    for item in ready:
        key = (item.index,) if item.tiling is not None else (*item.size, int(item.caption.shape[1]))
        groups.setdefault(key, []).append(item)
    for items in groups.values():
        _decode_group(decoder, items, requests, results, steps)
    return results


def _decode_group(decoder, items: list[_Ready], requests, results: list[DecodeResult], steps: int) -> None:
    """One decode of ``items`` (one tiled request, or one-shot requests of one size); their
    results (or the decode's error for each)."""
    height, width = items[0].size
    # One-shot requests were planned one by one; together they decode in one shot at any size.
    tiling = (
        items[0].tiling if items[0].tiling is not None else {"tiles": "off", "allow_untrained_size": True}
    )
    try:
        image = decoder.decode(
            torch.cat([r.latent for r in items]), torch.cat([r.caption for r in items]),
            degrade_sigma=torch.cat([r.sigma for r in items]),
            noise=[torch.cat(draws) for draws in zip(*(r.noise for r in items), strict=True)],
            size=(height, width), steps=steps, **tiling,
        )  # fmt: skip
    except Exception as exc:
        rows = sum(r.rows for r in items)
        err = _as_error(exc, f"decode of {len(items)} request(s), {rows} image(s) at {width}x{height}")
        for r in items:
            results[r.index].error = err
        return
    log.debug("decoded %d request(s), %d image(s) at %dx%d", len(items), image.shape[0], width, height)
    start = 0
    for r in items:
        part = image[start : start + r.rows]
        start += r.rows
        out = results[r.index]
        out.tiled = r.tiling is not None
        wanted = requests[r.index].outputs
        if "image" in wanted:
            out.image = part.numpy()
        if "png" in wanted:
            try:
                out.png = png_bytes(part)
            except Exception as exc:
                out.error = _as_error(exc, requests[r.index].what)


def png_bytes(images: torch.Tensor) -> list[bytes]:
    """[n, 3, H, W] float in [-1, 1] -> n PNG files, byte for byte what
    :func:`pid_trt.io.write_images` writes for the same images: quantized on the images'
    device, encoded in parallel over the batch (:func:`pid_trt.io.writer.encode_all`)."""
    from pid_trt.io.encoders import OutputFormat, OutputOptions
    from pid_trt.io.images import host_pixels
    from pid_trt.io.writer import encode_all

    if not bool(torch.isfinite(images).all()):
        raise PidTrtError("decoded images contain NaN/Inf; refusing to encode them as PNG")
    options = OutputOptions()
    return encode_all(host_pixels(images, OutputFormat.PNG, options), OutputFormat.PNG, options)


def _prepare(decoder, index: int, req: DecodeRequest, steps: int, tiling: dict[str, Any]) -> _Ready:
    """Validate one request by the latent file's rules and plan its size (``tiling``: its
    decode keywords); its caption and noise."""
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
        size_plan = decoder.plan(height, width, lat.batch, steps, **tiling)
    except ConfigError as exc:  # the decode's own words (bad tiling, tiles off outside the envelope)
        raise ConfigError(f"{what}: {exc}") from None
    if req.prompt is not None:
        caption = decoder.encode_prompts(list(req.prompt), lat.batch)
    elif lat.caption is not None:
        caption = lat.caption
    else:
        # What Decoder.decode does without a caption (a seeded stand-in for random-weight
        # nets; a one-line refusal for real checkpoints), drawn per request with its seed.
        caption = stand_in_caption(decoder.spec, lat.batch, seed)
    noise = draw_noise((lat.batch, 3, height, width), steps, seed)
    tiled = tiling if size_plan.tiled else None
    return _Ready(index, lat.latent, caption, lat.degrade_sigma, noise, (height, width), tiled)


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
    first = " ".join(str(exc).split()) or type(exc).__name__
    return PidTrtError(f"{what}: internal error ({type(exc).__name__}: {first})")
