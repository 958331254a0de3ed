"""Decode one latent file with a loaded :class:`pid_trt.Decoder` and write its image(s): the
worker of ``pidtrt decode`` for one file and for many (:func:`pid_trt.jobs.run_jobs`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from pid_trt.errors import ConfigError, InputFileError
from pid_trt.io.caption import caption_for_latent
from pid_trt.io.encoders import OutputOptions
from pid_trt.jobs.outputs import Job, output_exists
from pid_trt.quoting import printable
from pid_trt.tiling.options import TileOptions

if TYPE_CHECKING:
    from pid_trt.decoder import Decoder


class Beside(Protocol):
    """A second decoder beside PiD on each latent file (the LDM's own VAE:
    :class:`pid_trt.integrations.vae_beside.VaeBeside`)."""

    def record(self, output: Path) -> Path:
        """Its record of PiD's output ``output``, written last: there, the file is finished."""

    def check(self, latent: Any, source: Path) -> Any:
        """Accept the read latent file (:class:`pid_trt.io.LatentFile`) or raise a one-line
        error, before PiD decodes it; returns what :meth:`write` needs."""

    def write(
        self, checked: Any, latent: Any, image: Any, output: Path, pid_files: list[Path], pid_seconds: float
    ) -> tuple[list[Path], dict[str, Any]]:
        """Decode beside PiD's ``image`` [B, 3, H, W] (written to ``pid_files``), write its
        files beside ``output``, its record last; returns (paths written, the record)."""


@dataclass(frozen=True)
class DecodeSettings:
    """What every file of one run is decoded with.

    prompt: caption text (one, or one per batch row; encoded by the Decoder's text encoder);
    caption_file: a ``pidtrt encode-caption`` file; size: output "WxH" when it is not the
    latent's own; noise_file: a noise file [S, B, 3, H, W] (one file's run only); seed: the
    sampler's noise seed; steps: sampler steps; tiling: the decode's
    :class:`~pid_trt.tiling.TileOptions` (``--tiles``, ``--tile-size`` ...);
    beside: a second decoder beside PiD (``--compare-vae``), or None; output: how images
    are encoded (``--png-level``, ``--quality``, ``--bit-depth``, ``--webp-lossless``).
    """

    prompt: tuple[str, ...] = ()
    caption_file: Path | None = None
    size: str | None = None
    noise_file: Path | None = None
    seed: int = 0
    steps: int = 4
    tiling: TileOptions = TileOptions()
    beside: Beside | None = None
    output: OutputOptions = OutputOptions()


@dataclass(frozen=True)
class Decoded:
    """What one file's decode wrote: the paths, the output size in pixels, the batch, seconds
    (PiD's decode), the beside decoder's record (None without one) and the caption's source
    (:class:`pid_trt.caption_choice.Caption`: prompt, file, null (FILE) ...). With a writer pool, ``pending`` is the future of the paths (``written`` then empty until
    :meth:`finished`)."""

    written: list[Path]
    width: int
    height: int
    batch: int
    seconds: float
    beside: dict[str, Any] | None = None
    caption: str = ""
    pending: Future | None = None

    def finished(self) -> Decoded:
        """This decode once its files are written (waits for ``pending``; raises its error)."""
        if self.pending is None:
            return self
        return Decoded(
            self.pending.result(),
            self.width,
            self.height,
            self.batch,
            self.seconds,
            self.beside,
            self.caption,
        )


def decode_exists(settings: DecodeSettings) -> Callable[[Job], bool]:
    """The ``--skip-existing`` test of a decode job: its output exists
    (:func:`~pid_trt.jobs.output_exists`), and with a beside decoder its record too."""
    if settings.beside is None:
        return output_exists
    beside = settings.beside
    return lambda job: output_exists(job) and beside.record(job.output).is_file()


def provenance(
    decoder: Decoder, lat: Any, settings: DecodeSettings, height: int, width: int, caption: str
) -> Any:
    """The :class:`~pid_trt.io.provenance.Provenance` of one file's decode (its plan: one
    shot or tiles, as :meth:`pid_trt.Decoder.plan` says for these settings)."""
    from pid_trt.io.provenance import caption_kind, for_decode, tiles_text

    size_plan = decoder.plan(height, width, lat.batch, settings.steps, tiling=settings.tiling)
    return for_decode(
        decoder.spec, decoder.backend_name, decoder.precision, decoder.device, seed=settings.seed,
        steps=settings.steps, height=height, width=width, degrade_sigma=lat.degrade_sigma.tolist(),
        tiles=tiles_text(size_plan), caption=caption_kind(caption, settings.caption_file is not None), prompt=settings.prompt, caption_file=settings.caption_file,
    )  # fmt: skip


def file_caption(decoder: Decoder, lat: Any, latent: Path, caption: Any, prompt: Any, seed: int) -> Any:
    """The caption of latent file ``latent`` (read as ``lat``) by the rule of every front end
    (:meth:`pid_trt.Decoder.choose_caption`); a refusal names the file."""
    try:
        return decoder.choose_caption(lat.batch, caption, prompt, seed)
    except InputFileError as exc:
        if prompt is not None or caption is not None:
            raise
        raise InputFileError(f"latent file {printable(latent)} has no caption_embedding; {exc}") from None


def decode_file(
    decoder: Decoder,
    latent: Path,
    output: Path,
    settings: DecodeSettings,
    on_start: Callable[[], None] | None = None,
    writer: Any = None,
) -> Decoded:
    """Read ``latent``, decode it with ``decoder`` and write ``output`` (image(s) by suffix or
    safetensors, atomically). Raises the project's one-line errors for a bad file or a missing
    caption. ``on_start`` is called once the inputs are read and checked, before the decode
    runs. ``writer``: a :class:`pid_trt.io.writer.ImageWriter` that encodes and writes while
    the caller goes on (the image then quantized on the decode's device; see
    :attr:`Decoded.pending`); None: written here, before returning."""
    from pid_trt.io import output_format, read_noise_file, write_images
    from pid_trt.io.images import pooled_output
    from pid_trt.jobs.readahead import read_latent

    config = decoder.config
    lat = read_latent(latent, config)  # read ahead in a run over many files
    prompt = settings.prompt
    caption = caption_for_latent(lat, latent, config, prompt=bool(prompt), caption_file=settings.caption_file)
    text = (list(prompt) if len(prompt) > 1 else prompt[0]) if prompt else None
    chosen = file_caption(decoder, lat, latent, caption, text, settings.seed)
    height, width = decoder.output_size(lat.latent_hw, settings.size)
    steps = settings.steps
    noise = settings.noise_file
    draws = read_noise_file(noise, steps, lat.batch, height, width) if noise is not None else None
    beside = settings.beside
    try:
        fmt = output_format(output)
        settings.output.check(fmt)
    except ConfigError as exc:  # the output is one of the job's files: a bad one fails the job
        raise InputFileError(str(exc)) from None
    checked = beside.check(lat, latent) if beside is not None else None
    # planned as the decode plans it, at the same moment (tiles auto reads the free memory)
    made = provenance(decoder, lat, settings, height, width, chosen.source)
    pooled = writer is not None and beside is None  # the beside decoder compares the float image
    dtype, on_device = (
        pooled_output(fmt, settings.output, decoder.device) if pooled else (torch.float32, False)
    )
    if on_start is not None:
        on_start()
    start = time.perf_counter()
    image = decoder.decode(
        lat.latent, chosen.embedding, degrade_sigma=lat.degrade_sigma, seed=settings.seed, noise=draws,
        size=(height, width), steps=steps, output_dtype=dtype, keep_on_device=on_device, tiling=settings.tiling,
    )  # fmt: skip
    pid_seconds = time.perf_counter() - start
    if pooled:
        pending = writer.submit(image, output, settings.output, text=made.to_text())
        return Decoded([], width, height, lat.batch, pid_seconds, None, chosen.source, pending)
    written = write_images(image, output, settings.output, text=made.to_text())
    record = None
    if beside is not None:
        more, record = beside.write(checked, lat, image, output, list(written), pid_seconds)
        written += more
    return Decoded(written, width, height, lat.batch, time.perf_counter() - start, record, chosen.source)
