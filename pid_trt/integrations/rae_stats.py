"""The RAE latent statistics of the dinov2 backbone: upstream's ``stat.pt`` (a ``torch.save``
dict of ``mean`` and ``var``, read with ``weights_only=True``: tensors and plain containers
only, never code) or a safetensors file with those two tensors; each broadcastable to the
latent's [C, h, w] (upstream's: [768, 32, 32]). The dinov2 latent is
(z - mean) / sqrt(var + 1e-5) (:mod:`pid_trt.integrations.rae_encoders`).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pid_trt.errors import InputFileError
from pid_trt.quoting import printable, quote_names

#: Keys of the statistics file.
STATS_KEYS = ("mean", "var")


@dataclass(frozen=True)
class RaeStats:
    """RAE latent statistics: ``mean`` and ``var``, float32, each broadcastable to the latent's
    [C, h, w] (upstream's are [768, 32, 32])."""

    mean: torch.Tensor
    var: torch.Tensor
    source: str


def read_rae_stats(path: str | os.PathLike[str]) -> RaeStats:
    """Read a statistics file: a ``torch.save`` dict (loaded with ``weights_only=True``, so a
    pickle that would run code is refused) or a safetensors file, holding float tensors
    ``mean`` and ``var``; var must be >= 0 and both finite. InputFileError otherwise."""
    what = f"statistics file {printable(path)}"
    p = Path(path)
    try:
        exists, is_file = p.exists(), p.is_file()
    except OSError as exc:  # a name too long for the file system, a permission denied on the way
        raise InputFileError(f"{what}: cannot be read ({exc.strerror or exc})") from None
    if not exists:
        raise InputFileError(f"{what}: file not found")
    if not is_file:
        raise InputFileError(f"{what}: not a file (expected upstream's stat.pt or a safetensors file)")
    try:
        with open(p, "rb") as f:
            head = f.read(1)
    except OSError as exc:
        raise InputFileError(f"{what}: cannot be opened ({printable(exc.strerror or exc)})") from None
    if zipfile.is_zipfile(p) or head == b"\x80":
        tensors = _torch_stats(p, what)
    else:
        tensors = _safetensors_stats(p, what)
    mean, var = tensors["mean"], tensors["var"]
    for name, t in (("mean", mean), ("var", var)):
        if not bool(torch.isfinite(t).all()):
            raise InputFileError(f"{what}: {name} has NaN/Inf values, expected finite statistics")
    if bool((var < 0).any()):
        raise InputFileError(
            f"{what}: var has negative values ({float(var.min()):g}), expected variances >= 0"
        )
    return RaeStats(mean.contiguous(), var.contiguous(), os.fspath(path))


def _torch_stats(path: Path, what: str) -> dict[str, torch.Tensor]:
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = printable(" ".join(str(exc).split()))
        raise InputFileError(
            f"{what}: refused, it is not plain tensors (weights_only load failed: {first})"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        first = printable(" ".join(str(exc).split()))
        raise InputFileError(
            f"{what}: cannot be read as a torch file ({type(exc).__name__}: {first})"
        ) from None
    if not isinstance(obj, dict):
        raise InputFileError(f"{what}: holds a {type(obj).__name__}, expected a dict with 'mean' and 'var'")
    return _pick_stats(obj, what)


def _safetensors_stats(path: Path, what: str) -> dict[str, torch.Tensor]:
    from pid_trt.io.stfile import load_float_tensors, open_input
    from pid_trt.safetensors_header import read_header_from

    with open_input(path, what) as f:
        header = read_header_from(f, what, InputFileError)
        missing = [k for k in STATS_KEYS if k not in header.tensors]
        if missing:
            have = quote_names(sorted(header.tensors))
            raise InputFileError(f"{what}: no tensor {' or '.join(map(repr, missing))} (has {have})")
        return load_float_tensors(f, header, list(STATS_KEYS), what)


def _pick_stats(obj: dict[Any, Any], what: str) -> dict[str, torch.Tensor]:
    missing = [k for k in STATS_KEYS if k not in obj]
    if missing:
        have = quote_names(sorted(obj, key=repr))
        raise InputFileError(f"{what}: no {' or '.join(map(repr, missing))} entry (has {have})")
    out = {}
    for k in STATS_KEYS:
        t = obj[k]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            kind = f"a {t.dtype} tensor" if isinstance(t, torch.Tensor) else f"a {type(t).__name__}"
            raise InputFileError(f"{what}: {k!r} is {kind}, expected a float tensor")
        out[k] = t.detach().to(torch.float32)
    return out
