"""Decoded images to files (DESIGN.md §3 "Outputs"): PNG (8 or 16 bits), JPEG, WebP, or a
float32 safetensors tensor; the format by the output's suffix (:mod:`pid_trt.io.encoders`)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from pid_trt.atomic import atomic_write
from pid_trt.errors import ConfigError, InputFileError, PidTrtError
from pid_trt.io.encoders import SUFFIX_FORMATS, OutputFormat, OutputOptions, encode_image, output_format
from pid_trt.quoting import printable

IMAGE_KEY = "image"
#: Output suffixes :func:`write_images` understands (compared case-insensitively).
SUPPORTED_SUFFIXES = tuple(SUFFIX_FORMATS)


#: The pixel dtypes :func:`quantize` produces, and their top value.
PIXEL_MAX = {torch.uint8: 255, torch.uint16: 65535}


def quantize(images: torch.Tensor, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """[B, 3, H, W] float in [-1, 1] -> [B, 3, H, W] ``dtype`` (uint8 or uint16) on the
    images' own device: floor((clamp(x, -1, 1) + 1) * M / 2), M = 255 or 65535.

    The one quantization rule of every output (DESIGN.md §3 "Outputs"): run it where the image
    was decoded, before the device -> host copy (a quarter of float32's bytes for uint8).
    Computed in float64 so that 1.0 lands exactly on M; -1 -> 0, 0 -> 127 (uint8).
    """
    top = PIXEL_MAX.get(dtype)
    if top is None:
        raise ValueError(f"pixel dtype {dtype}: expected torch.uint8 or torch.uint16")
    x = images.detach().to(torch.float64).clamp(-1.0, 1.0)
    return ((x + 1.0) * (top / 2)).floor_().clamp_(0, top).to(dtype)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] float in [-1, 1] -> [B, H, W, 3] uint8 on the CPU, per :func:`quantize`.

    -1 -> 0, 0 -> 127, 1 -> 255.
    """
    return quantize(images).permute(0, 2, 3, 1).cpu().contiguous()


def png_paths(path: str | os.PathLike[str], batch: int) -> list[Path]:
    """The image file(s) :func:`write_images` writes for ``path``: itself for B = 1, else
    stem_k.suffix (any image suffix, not only .png)."""
    p = Path(path)
    if batch == 1:
        return [p]
    return [p.with_name(f"{p.stem}_{k}{p.suffix}") for k in range(batch)]


def check_output(images: torch.Tensor, path: str | os.PathLike[str], options: OutputOptions) -> OutputFormat:
    """The format ``images`` [B, 3, H, W] go to ``path`` in, once they are checked (float
    [B, 3, H, W], finite; a suffix and options that fit). One-line errors otherwise."""
    try:
        fmt = output_format(path)
        options.check(fmt)
    except ConfigError as exc:
        raise InputFileError(str(exc)) from None
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"images of shape {list(images.shape)} {images.dtype}: expected float [B, 3, H, W]")
    if not bool(torch.isfinite(images).all()):
        raise PidTrtError(f"decoded images contain NaN/Inf; refusing to write {printable(path)}")
    return fmt


def host_pixels(images: torch.Tensor, fmt: OutputFormat, options: OutputOptions):
    """[B, 3, H, W] float images -> [B, H, W, 3] numpy pixels on the host (uint8, or uint16 for a
    16-bit PNG): quantized and laid out on the images' device, then one copy to the host.
    Pixels already quantized ([B, 3, H, W] uint8 / uint16) are only laid out and copied."""
    if not images.is_floating_point():
        return images.permute(0, 2, 3, 1).cpu().numpy()
    dtype = torch.uint16 if options.pixel_bits(fmt) == 16 else torch.uint8
    return quantize(images, dtype).permute(0, 2, 3, 1).contiguous().cpu().numpy()  # laid out on the device


def pooled_output(
    fmt: OutputFormat, options: OutputOptions, device: str | torch.device
) -> tuple[torch.dtype, bool]:
    """What a decode on ``device`` hands an :class:`~pid_trt.io.writer.ImageWriter` for a
    ``fmt`` file, as ``(output_dtype, keep_on_device)`` of :meth:`pid_trt.Decoder.decode`:
    float32 for safetensors; else pixels quantized where they were decoded (uint16 for a
    16-bit PNG, uint8 otherwise), left on the device only where their encoder runs there (a
    JPEG on CUDA with nvJPEG, :func:`~pid_trt.io.encoders.jpeg_engine_on`), copied to the host
    for every other encoder. The one rule of every front end that writes through a pool."""
    from pid_trt.io.encoders import jpeg_engine_on

    if fmt is OutputFormat.SAFETENSORS:
        return torch.float32, False
    dtype = torch.uint16 if options.pixel_bits(fmt) == 16 else torch.uint8
    return dtype, fmt is OutputFormat.JPEG and jpeg_engine_on(device) == "nvjpeg"


def write_pixels(
    pixels,
    target: Path,
    fmt: OutputFormat,
    options: OutputOptions,
    text: Mapping[str, str] | None = None,
    clock: StageClock | None = None,
) -> Path:
    """Encode one image ``pixels`` [H, W, 3] and write it to ``target`` atomically; returns it.
    Raises InputFileError (one line, naming the file) when the write fails. ``clock``: adds
    the seconds spent encoding and writing, and the bytes written."""
    start = time.perf_counter()
    data = encode_image(pixels, fmt, options, text)
    encoded = time.perf_counter()
    _write_one(target, lambda tmp: Path(tmp).write_bytes(data))
    if clock is not None:
        clock.add(encode=encoded - start, write=time.perf_counter() - encoded, nbytes=len(data))
    return target


def write_encoded(data: bytes, target: Path, clock: StageClock | None = None, encode_s: float = 0.0) -> Path:
    """Already encoded file bytes to ``target``, atomically; the one-line error of
    :func:`write_pixels` when the write fails. ``encode_s``: the seconds their encoding took
    (added to ``clock``'s encode stage)."""
    start = time.perf_counter()
    _write_one(target, lambda tmp: Path(tmp).write_bytes(data))
    if clock is not None:
        clock.add(encode=encode_s, write=time.perf_counter() - start, nbytes=len(data))
    return target


class StageClock:
    """Seconds spent encoding and writing images, and bytes written, summed over threads."""

    def __init__(self) -> None:
        self.encode = self.write = 0.0
        self.nbytes = self.images = 0
        self._lock = threading.Lock()

    def add(self, *, encode: float, write: float, nbytes: int) -> None:
        with self._lock:
            self.encode += encode
            self.write += write
            self.nbytes += nbytes
            self.images += 1


def write_float(images: torch.Tensor, target: Path) -> Path:
    """``images`` as one float32 safetensors tensor ``image`` [B, 3, H, W] in [-1, 1]; atomic."""
    data = images.detach().to("cpu", torch.float32).clamp(-1.0, 1.0).contiguous()
    _write_one(target, lambda tmp: save_file({IMAGE_KEY: data}, os.fspath(tmp)))
    return target


def batch_error(targets: list[Path], failed: dict[int, str]) -> InputFileError:
    """The one-line error of a batch whose images ``failed`` (index -> message) were not written."""
    done = ", ".join(t.name for k, t in enumerate(targets) if k not in failed) or "none"
    which = "; ".join(f"image {k} ({msg})" for k, msg in failed.items())
    return InputFileError(f"{len(failed)} of {len(targets)} images not written: {which} (written: {done})")


def write_images(
    images: torch.Tensor,
    path: str | os.PathLike[str],
    options: OutputOptions | None = None,
    text: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write decoded ``images`` [B, 3, H, W] (float, nominally in [-1, 1]) to ``path``; atomic.

    The format by suffix: ``.png`` (:func:`quantize`'s pixels, lossless; 16 bits with
    ``options.bit_depth``), ``.jpg``/``.jpeg``, ``.webp``: ``path`` for B = 1, ``stem_0.png``,
    ``stem_1.png`` ... for B > 1; ``.safetensors``: one tensor ``image`` [B, 3, H, W] float32,
    clamped to [-1, 1]. ``text``: metadata stored in each image file. Each file is written
    atomically; when image k of a batch fails, the others are still written (nothing decoded
    is lost) and the one-line error names every image that failed and every file written.
    Returns the paths written. Raises InputFileError for an unsupported suffix or a failed
    write, PidTrtError for non-finite images, ValueError for a tensor of the wrong shape.
    """
    options = options or OutputOptions()
    fmt = check_output(images, path, options)
    out = Path(path)
    if fmt is OutputFormat.SAFETENSORS:
        return [write_float(images, out)]
    pixels = host_pixels(images, fmt, options)
    targets = png_paths(out, images.shape[0])
    failed: dict[int, str] = {}
    for k, target in enumerate(targets):
        try:
            write_pixels(pixels[k], target, fmt, options, text)
        except InputFileError as exc:
            if len(targets) == 1:
                raise
            failed[k] = str(exc)
    if failed:
        raise batch_error(targets, failed)
    return targets


def _write_one(target: Path, write) -> None:
    try:
        with atomic_write(target) as tmp:
            write(tmp)
    except OSError as exc:
        raise InputFileError(
            f"output {printable(target)}: write failed ({printable(exc.strerror or exc)})"
        ) from None
