"""Latent file in, image file(s) out, decoded by a running ``pidtrt serve``.

Used by ``pidtrt request`` and ``pidtrt decode --server``. The file is read and checked
here by the same rules (and with the same messages) as ``pidtrt decode``, against the
server's net (its model parameters), before anything is sent; the outputs are written as
``pidtrt decode`` writes them (:func:`pid_trt.io.write_images`; PNGs arrive encoded by the
server, byte for byte those ``pidtrt decode`` writes for the same image; another format, PNG
level or bit depth is encoded here from the server's lossless pixels, provenance carried over).
:class:`RemoteFiles` is the job worker (:mod:`pid_trt.jobs`) of ``pidtrt decode --server``:
one client per thread, a request the server refused as overloaded retried a few times.
Both send the tiling options given (``tiles``, ``tile_size`` ...) as request parameters.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pid_trt.atomic import atomic_write
from pid_trt.config import NetConfig
from pid_trt.errors import ConfigError, InputFileError
from pid_trt.io import SUPPORTED_SUFFIXES, png_paths, read_latent_file, write_images
from pid_trt.io.encoders import DEFAULT_PNG_LEVEL, OutputFormat, OutputOptions, output_format, read_png
from pid_trt.io.images import write_pixels
from pid_trt.jobs import Job
from pid_trt.serve.client import PidClient, ServeRequestError, tiling_parameters

#: Retries of a request the server refused as overloaded (its queue was full), and the first wait.
OVERLOAD_RETRIES = 3
OVERLOAD_WAIT_S = 1.0


@dataclass(frozen=True)
class Decoded:
    """What one request wrote: the files, the image size (height, width) and the batch."""

    written: list[Path]
    height: int
    width: int
    batch: int


def server_net(params: dict[str, str]) -> NetConfig:
    """The input sizes of the server's net (its model parameters) as a NetConfig, for
    checking a latent file as ``pidtrt decode`` would (only those sizes are meaningful)."""
    try:
        return NetConfig(
            lq_latent_channels=int(params["latent_channels"]),
            txt_embed_dim=int(params["txt_embed_dim"]),
            txt_max_length=int(params["txt_max_length"]),
        )
    except (KeyError, ValueError):
        raise ConfigError(f"the server's model parameters lack the net's sizes: {sorted(params)}") from None


def check_output(output: str | os.PathLike[str]) -> None:
    suffix = Path(output).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputFileError(
            f"output {os.fspath(output)}: unsupported suffix {Path(output).suffix or '(none)'!r}, "
            f"expected one of {', '.join(SUPPORTED_SUFFIXES)}"
        )


def request_file(
    client: PidClient,
    latent: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    seed: int = 0,
    prompt: Sequence[str] = (),
    caption: str | os.PathLike[str] | None = None,
    tiling: Mapping[str, Any] | None = None,
    options: OutputOptions | None = None,
) -> Decoded:
    """Send latent file ``latent`` to the server and write ``output`` as ``pidtrt decode``
    writes it (image(s) by suffix, one per batch row; .safetensors: tensor ``image``).
    ``tiling``: the request's tiling parameters (:func:`~pid_trt.serve.client.tiling_parameters`;
    absent ones are the server's); ``options``: how the images are encoded (``--png-level``,
    ``--quality``, ``--bit-depth``, ``--webp-lossless``), by :func:`written_from_server`.
    Raises the project's one-line errors (:class:`~pid_trt.serve.client.ServeRequestError`
    for the server's)."""
    from pid_trt.io.caption import caption_for_latent

    check_output(output)
    options = options or OutputOptions()
    fmt = output_format(output)
    try:
        options.check(fmt)
    except ConfigError as exc:
        raise InputFileError(str(exc)) from None
    params = client.parameters()
    config = server_net(params)
    lat = read_latent_file(latent, config)
    caption_emb = caption_for_latent(lat, latent, config, prompt=bool(prompt), caption_file=caption)
    wanted = _outputs(fmt, options)
    out = client.decode(
        lat.latent.numpy(), None if caption_emb is None else caption_emb.numpy(),
        prompt=list(prompt) if prompt else None, degrade_sigma=lat.degrade_sigma.numpy(), seed=seed,
        outputs=wanted, request_id=Path(latent).name, tiling=tiling,
    )  # fmt: skip
    ppl = int(params.get("pixels_per_latent", "0") or 0)
    height, width = lat.latent_hw[0] * ppl, lat.latent_hw[1] * ppl
    if "image" in wanted:
        image = torch.from_numpy(np.array(out["image"], dtype=np.float32))
        height, width = int(image.shape[-2]), int(image.shape[-1])
        text = read_png(out["png"][0])[1] if "png" in out else None
        written = write_images(image, output, options, text=text)
    else:
        written = written_from_server(out["png"], output, fmt, options)
    return Decoded(written, height, width, lat.batch)


def _outputs(fmt: OutputFormat, options: OutputOptions) -> tuple[str, ...]:
    """What to ask the server for: its PNGs (8-bit pixels, lossless, with their provenance) for
    every 8-bit image format; the float image for .safetensors, and beside the PNG for 16 bits."""
    if fmt is OutputFormat.SAFETENSORS:
        return ("image",)
    return ("png",) if options.pixel_bits(fmt) == 8 else ("png", "image")


def written_from_server(
    pngs: Sequence[bytes], output: str | os.PathLike[str], fmt: OutputFormat, options: OutputOptions
) -> list[Path]:
    """The server's PNG files (its default encoding) written to ``output`` in ``fmt`` with
    ``options``: as they came when that is the same PNG encoding, else re-encoded here from
    their (lossless) pixels, their provenance carried over, as ``pidtrt decode`` writes them."""
    if fmt is OutputFormat.PNG and options.png_level == DEFAULT_PNG_LEVEL:
        return write_pngs(pngs, output)
    targets = png_paths(output, len(pngs))
    for data, target in zip(pngs, targets, strict=True):
        pixels, text = read_png(data)
        write_pixels(pixels, target, fmt, options, text)
    return targets


def write_pngs(pngs: Sequence[bytes], output: str | os.PathLike[str]) -> list[Path]:
    """Encoded PNGs to ``output`` (``stem_k.png`` for several, as :func:`pid_trt.io.write_images`); atomic."""
    targets = png_paths(output, len(pngs))
    for data, target in zip(pngs, targets, strict=True):
        try:
            with atomic_write(target) as tmp:
                Path(tmp).write_bytes(data)
        except OSError as exc:
            raise InputFileError(
                f"output {os.fspath(target)}: write failed ({exc.strerror or exc})"
            ) from None
    return targets


class RemoteFiles:
    """A job worker that sends each job's latent file to the server at ``url`` and writes its
    output, as :func:`request_file` (``timeout_s``: how long one request may take; ``tiling``:
    each request's tiling parameters; ``options``: how the images are encoded). Called
    from several threads at once, each with its own client; a request refused as overloaded
    (``ServeRequestError`` kind ``overload``) is retried ``retries`` times, waiting
    ``wait_s`` seconds and doubling. :meth:`close` (or leaving the ``with`` block) closes
    the clients."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        seed: int = 0,
        prompt: Sequence[str] = (),
        caption: str | os.PathLike[str] | None = None,
        tiling: Mapping[str, Any] | None = None,
        options: OutputOptions | None = None,
        retries: int = OVERLOAD_RETRIES,
        wait_s: float = OVERLOAD_WAIT_S,
    ) -> None:
        self.url, self.timeout_s, self.seed = url, timeout_s, seed
        self.prompt, self.caption = list(prompt), caption
        self.tiling = tiling_parameters(tiling)  # checked once, before any request
        self.options = options or OutputOptions()
        self.retries, self.wait_s = retries, wait_s
        self._local = threading.local()
        self._clients: list[PidClient] = []
        self._lock = threading.Lock()

    def _client(self) -> PidClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = PidClient(self.url, timeout_s=self.timeout_s)
            with self._lock:
                self._clients.append(client)
        return client

    def __call__(self, job: Job) -> None:
        client = self._client()
        job.output.parent.mkdir(parents=True, exist_ok=True)
        wait = self.wait_s
        for attempt in range(self.retries + 1):
            try:
                request_file(
                    client, job.source, job.output, seed=self.seed, prompt=self.prompt, caption=self.caption,
                    tiling=self.tiling, options=self.options,
                )  # fmt: skip
                return
            except ServeRequestError as exc:
                if exc.kind != "overload" or attempt == self.retries:
                    raise
            time.sleep(wait)
            wait *= 2

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def __enter__(self) -> RemoteFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
