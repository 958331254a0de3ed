"""A bounded, pipelined image writer: encoding and writing run on a pool of threads while the
caller decodes the next image.

:meth:`ImageWriter.submit` takes a decoded batch (float [B, 3, H, W], or pixels already
quantized on the device), hands each image to a writer thread and returns a future of the
paths; at most ``max_in_flight`` images are queued or being written at once (``submit``
blocks while the pool is full), so memory stays bounded. ISA-L, zlib and Pillow release the GIL
while they compress, so threads encode in parallel. Every file is written atomically
(:mod:`pid_trt.atomic`); a failed write fails its own batch's future alone; leaving the
``with`` block (Ctrl-C included) waits for the writes in flight. ``writers=0`` writes in
the calling thread, as a plain :func:`~pid_trt.io.write_images` does: same bytes either way.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from pid_trt.errors import ConfigError, InputFileError
from pid_trt.io.encoders import OutputFormat, OutputOptions
from pid_trt.io.images import (
    StageClock,
    batch_error,
    check_output,
    host_pixels,
    png_paths,
    quantize,
    write_encoded,
    write_float,
    write_pixels,
)
from pid_trt.quoting import printable

#: The most writer threads the default picks.
MAX_DEFAULT_WRITERS = 8
#: Images in flight per writer thread by default (queued or being encoded and written).
IMAGES_PER_WRITER = 2


def default_writers(share: int = 1) -> int:
    """Writer threads by default: this process's CPU cores divided among ``share`` processes
    (torchrun ranks of one node), at least 1, at most :data:`MAX_DEFAULT_WRITERS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WRITERS, cores // max(1, share)))


class _Batch:
    """The images of one :meth:`ImageWriter.submit`: a future resolved when the last is done."""

    def __init__(self, targets: list[Path]) -> None:
        self.targets = targets
        self.future: Future[list[Path]] = Future()
        self._left = len(targets)
        self._failed: dict[int, str] = {}
        self._lock = threading.Lock()

    def done(self, k: int, error: str | None) -> None:
        with self._lock:
            if error is not None:
                self._failed[k] = error
            self._left -= 1
            if self._left:
                return
        if not self._failed:
            self.future.set_result(self.targets)
        elif len(self.targets) == 1:
            self.future.set_exception(InputFileError(self._failed[0]))
        else:
            self.future.set_exception(batch_error(self.targets, self._failed))


class ImageWriter:
    """Writes decoded batches to image files on ``writers`` threads (0: in the calling thread),
    at most ``max_in_flight`` images at once (default: :data:`IMAGES_PER_WRITER` per writer). Use as a context manager,
    or call :meth:`close`. ``peak``: the most images that were in flight at once; ``clock``:
    the seconds the threads spent encoding and writing (:class:`~pid_trt.io.images.StageClock`)."""

    def __init__(self, writers: int | None = None, max_in_flight: int | None = None) -> None:
        writers = default_writers() if writers is None else writers
        if writers < 0:
            raise ConfigError(f"--writers {writers}: expected 0 (write in the decoding thread) or more")
        limit = max(1, IMAGES_PER_WRITER * writers) if max_in_flight is None else max_in_flight
        if limit < 1:
            raise ConfigError(f"max_in_flight {limit}: expected at least 1 image")
        self.writers, self.max_in_flight = writers, limit
        self.peak = 0
        self.clock = StageClock()
        self._in_flight = 0
        self._room = threading.Condition()
        self._pool = ThreadPoolExecutor(writers, thread_name_prefix="pidtrt-writer") if writers else None

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Wait for every write in flight, then stop the threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def submit(
        self,
        images: torch.Tensor,
        path: str | os.PathLike[str],
        options: OutputOptions | None = None,
        text: Mapping[str, str] | None = None,
    ) -> Future[list[Path]]:
        """Write ``images`` to ``path`` as :func:`~pid_trt.io.write_images` would; returns a future
        of the paths written (its exception: the one-line error of the failed images).

        ``images``: float [B, 3, H, W] in [-1, 1] (quantized here, on their device), or pixels
        [B, 3, H, W] uint8 (uint16 for a 16-bit PNG) already quantized. Bad input (suffix,
        shape, NaN) raises here, before anything is queued. Blocks while the pool is full.
        """
        options = options or OutputOptions()
        quantized = not images.is_floating_point()
        fmt = self._check_pixels(images, path, options) if quantized else check_output(images, path, options)
        out = Path(path)
        if fmt is OutputFormat.SAFETENSORS:
            return self._run(_Batch([out]), 0, lambda: write_float(images, out))
        if fmt is OutputFormat.JPEG and images.is_cuda:  # nvJPEG on the device: only the bytes cross
            return self._device_jpegs(images if quantized else quantize(images), out, options, text)
        pixels = host_pixels(images, fmt, options)
        batch = _Batch(png_paths(out, pixels.shape[0]))
        return self._queue(
            batch, lambda k, target: lambda: write_pixels(pixels[k], target, fmt, options, text, self.clock)
        )

    def _device_jpegs(
        self, pixels: torch.Tensor, out: Path, options: OutputOptions, text
    ) -> Future[list[Path]]:
        """JPEGs of CUDA ``pixels`` [B, 3, H, W] uint8, each encoded on the device by nvJPEG
        (:func:`~pid_trt.io.encoders.jpeg_from_tensor`) on a writer thread once the work queued
        so far on their stream is done (a CUDA event: the decoding thread does not wait), then
        written; the pixels stay on the device until their image is encoded."""
        from pid_trt.io.encoders import jpeg_from_tensor

        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(pixels.device))

        def encode_write(image: torch.Tensor, target: Path) -> None:
            start = time.perf_counter()
            ready.synchronize()
            data = jpeg_from_tensor(image, quality=options.quality, text=text)
            write_encoded(data, target, self.clock, encode_s=time.perf_counter() - start)

        batch = _Batch(png_paths(out, pixels.shape[0]))
        return self._queue(batch, lambda k, target: lambda: encode_write(pixels[k], target))

    def _queue(self, batch: _Batch, write_for) -> Future[list[Path]]:
        """Queue ``write_for(k, target)()`` for every image ``k`` of ``batch``; its future."""
        for k, target in enumerate(batch.targets):
            try:
                self._run(batch, k, write_for(k, target))
            except BaseException:  # Ctrl-C while waiting for room: the rest of the batch is not written
                for rest in range(k, len(batch.targets)):
                    batch.done(rest, f"output {batch.targets[rest]}: not written (interrupted)")
                raise
        return batch.future

    @staticmethod
    def _check_pixels(pixels: torch.Tensor, path, options: OutputOptions) -> OutputFormat:
        from pid_trt.io.encoders import output_format

        try:
            fmt = output_format(path)
            options.check(fmt)
        except ConfigError as exc:
            raise InputFileError(str(exc)) from None
        want = torch.uint16 if options.pixel_bits(fmt) == 16 else torch.uint8
        if (
            fmt is OutputFormat.SAFETENSORS
            or pixels.dtype != want
            or pixels.dim() != 4
            or pixels.shape[1] != 3
        ):
            raise ValueError(
                f"pixels of shape {list(pixels.shape)} {pixels.dtype} for {printable(path)}: expected "
                f"[B, 3, H, W] {want} (or float images)"
            )
        return fmt

    def _run(self, batch: _Batch, k: int, write) -> Future[list[Path]]:
        """Run ``write()`` (image ``k`` of ``batch``) on a writer thread once there is room."""

        def task() -> None:
            error = None
            try:
                write()
            except InputFileError as exc:
                error = str(exc)
            except Exception as exc:  # an encoder's own error: still this image's failure alone
                error = f"output {batch.targets[k]}: {type(exc).__name__}: {exc}"
            finally:
                with self._room:
                    self._in_flight -= 1
                    self._room.notify()
            batch.done(k, error)

        with self._room:
            while self._in_flight >= self.max_in_flight:
                self._room.wait()
            self._in_flight += 1
            self.peak = max(self.peak, self._in_flight)
        if self._pool is None:
            task()
        else:
            self._pool.submit(task)
        return batch.future


_shared: ThreadPoolExecutor | None = None
_shared_lock = threading.Lock()


def encode_later(
    pixels, fmt: OutputFormat, options: OutputOptions, text: Mapping[str, str] | None = None
) -> list[Future[bytes]]:
    """The file bytes of each image of ``pixels`` [n, H, W, 3], being encoded in parallel on one
    process-wide pool of :func:`default_writers` threads (e.g. a server encoding a batch's PNGs
    while it decodes the next): the same bytes as encoding them one by one."""
    from pid_trt.io.encoders import encode_image

    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ThreadPoolExecutor(default_writers(), thread_name_prefix="pidtrt-encode")
    return [_shared.submit(encode_image, px, fmt, options, text) for px in pixels]


def encode_all(
    pixels, fmt: OutputFormat, options: OutputOptions, text: Mapping[str, str] | None = None
) -> list[bytes]:
    """The file bytes of each image of ``pixels`` [n, H, W, 3], encoded in parallel
    (:func:`encode_later`); the same bytes as encoding them one by one."""
    from pid_trt.io.encoders import encode_image

    if len(pixels) < 2:
        return [encode_image(px, fmt, options, text) for px in pixels]
    return [f.result() for f in encode_later(pixels, fmt, options, text)]
