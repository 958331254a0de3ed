"""Decoded images to files (docs/design.md §3): uint8 PNGs or a float32 safetensors tensor."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from pid_trt.atomic import atomic_write
from pid_trt.errors import InputFileError, PidTrtError

IMAGE_KEY = "image"
#: Output suffixes :func:`write_images` understands (compared case-insensitively).
SUPPORTED_SUFFIXES = (".png", ".safetensors")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] float in [-1, 1] -> [B, H, W, 3] uint8: floor((clamp(x, -1, 1) + 1) * 127.5).

    -1 -> 0, 0 -> 127, 1 -> 255 (computed in float64 so that 1.0 lands exactly on 255).
    """
    x = images.detach().to("cpu", torch.float64).clamp(-1.0, 1.0)
    return ((x + 1.0) * 127.5).floor().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def png_paths(path: str | os.PathLike[str], batch: int) -> list[Path]:
    """The PNG file(s) :func:`write_images` writes for ``path``: itself for B = 1, else stem_k.png."""
    p = Path(path)
    if batch == 1:
        return [p]
    return [p.with_name(f"{p.stem}_{k}{p.suffix}") for k in range(batch)]


def write_images(
    images: torch.Tensor, path: str | os.PathLike[str], *, text: Mapping[str, str] | None = None
) -> list[Path]:
    """Write decoded ``images`` [B, 3, H, W] (float, nominally in [-1, 1]) to ``path``; atomic.

    ``.png``: uint8 PNG(s) per :func:`to_uint8`, ``path`` for B = 1, ``stem_0.png``,
    ``stem_1.png`` ... for B > 1. ``.safetensors``: one tensor ``image`` [B, 3, H, W]
    float32, clamped to [-1, 1]. Each file is written atomically; when PNG k of a batch
    fails, the others are still written (nothing decoded is lost) and the one-line error
    names every image that failed and every file that was written.
    ``text``: entries put in every PNG as iTXt chunks (the ``pid-trt`` provenance,
    :mod:`pid_trt.io.provenance`); ignored for safetensors.
    Returns the paths written. Raises InputFileError for an unsupported suffix or a failed
    write, PidTrtError for non-finite images, ValueError for a tensor of the wrong shape.
    """
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputFileError(
            f"output {os.fspath(path)}: unsupported suffix {out.suffix or '(none)'!r}, "
            f"expected one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"images of shape {list(images.shape)} {images.dtype}: expected float [B, 3, H, W]")
    if not bool(torch.isfinite(images).all()):
        raise PidTrtError(f"decoded images contain NaN/Inf; refusing to write {os.fspath(path)}")

    if suffix == ".safetensors":
        data = images.detach().to("cpu", torch.float32).clamp(-1.0, 1.0).contiguous()
        _write_one(out, lambda tmp: save_file({IMAGE_KEY: data}, os.fspath(tmp)))
        return [out]

    from PIL import Image

    from pid_trt.io.provenance import save_options

    extra = save_options("PNG", text)
    pixels = to_uint8(images).numpy()
    targets = png_paths(out, images.shape[0])
    failed: dict[int, str] = {}
    for k, target in enumerate(targets):
        try:
            _write_one(target, lambda tmp, k=k: Image.fromarray(pixels[k]).save(tmp, format="PNG", **extra))
        except InputFileError as exc:
            if len(targets) == 1:
                raise
            failed[k] = str(exc)
    if failed:
        done = ", ".join(t.name for k, t in enumerate(targets) if k not in failed) or "none"
        which = "; ".join(f"image {k} ({msg})" for k, msg in failed.items())
        raise InputFileError(f"{len(failed)} of {len(targets)} images not written: {which} (written: {done})")
    return targets


def _write_one(target: Path, write) -> None:
    try:
        with atomic_write(target) as tmp:
            write(tmp)
    except OSError as exc:
        raise InputFileError(f"output {os.fspath(target)}: write failed ({exc.strerror or exc})") from None
