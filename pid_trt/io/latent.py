"""Latent files (docs/design.md §3): what an LDM hands the decoder, as safetensors.

| key                 | shape                    | required        |
|---------------------|--------------------------|-----------------|
| ``latent``          | [B, C, h, w] or [C, h, w] | yes             |
| ``caption_embedding`` | [B, T, D] or [T, D]    | no              |
| ``degrade_sigma``   | [B] or scalar            | no (default 0)  |

Metadata may name ``backbone``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import save_file

from pid_trt.atomic import atomic_write
from pid_trt.config import NetConfig
from pid_trt.errors import InputFileError
from pid_trt.io.stfile import check_finite, load_float_tensors, open_input
from pid_trt.quoting import printable, quote_names
from pid_trt.safetensors_header import SafetensorsHeader, read_header_from

LATENT_KEY = "latent"
CAPTION_KEY = "caption_embedding"
SIGMA_KEY = "degrade_sigma"
BACKBONE_META = "backbone"
_KNOWN = (LATENT_KEY, CAPTION_KEY, SIGMA_KEY)
_RANKS = {LATENT_KEY: (3, 4), CAPTION_KEY: (2, 3), SIGMA_KEY: (0, 1)}
_FORMS = {
    LATENT_KEY: "[B, C, h, w] or [C, h, w]",
    CAPTION_KEY: "[B, T, D] or [T, D]",
    SIGMA_KEY: "[B] or a scalar",
}

#: Output edge (pixels) of :func:`sample_latent` when none is given (rounded up to the
#: net's pixels per latent cell).
DEFAULT_SAMPLE_SIZE = 256


@dataclass(frozen=True)
class LatentFile:
    """A validated latent file, batched.

    latent: [B, C, h, w] float32 normalised LDM latent.
    caption: [B, T, D] float32 caption embedding, or None when the file has none.
    degrade_sigma: [B] float32 noise level of the latent, in [0, 1].
    backbone: the ``backbone`` metadata string, or None.
    """

    latent: torch.Tensor
    caption: torch.Tensor | None
    degrade_sigma: torch.Tensor
    backbone: str | None = None

    @property
    def batch(self) -> int:
        """B."""
        return int(self.latent.shape[0])

    @property
    def latent_hw(self) -> tuple[int, int]:
        """(h, w) in latent cells."""
        return int(self.latent.shape[-2]), int(self.latent.shape[-1])


def read_latent_file(path: str | os.PathLike[str], config: NetConfig | None = None) -> LatentFile:
    """Read and validate a latent file; with ``config``, also check it fits that net.

    Unbatched tensors get B = 1; a [T, D] caption is broadcast over B; a scalar sigma too.
    With ``config``: C must equal ``lq_latent_channels``, D ``txt_embed_dim``; captions longer
    than ``txt_max_length`` are truncated to it (as upstream does), shorter ones refused.
    Every problem raises :class:`InputFileError` with a one-line message.
    """
    what = f"latent file {printable(path)}"
    with open_input(path, what) as f:
        header = read_header_from(f, what, InputFileError)
        names = _check_header(header, what)
        _check_shapes({n: header.tensors[n].shape for n in names}, what, config)
        tensors = load_float_tensors(f, header, names, what)
    return _assemble(tensors, what, config, header.metadata.get(BACKBONE_META))


def latent_from_tensors(
    latent: Any,
    caption: Any = None,
    degrade_sigma: Any = None,
    config: NetConfig | None = None,
    what: str = "latent",
) -> LatentFile:
    """Validate in-memory inputs (torch tensors, numpy arrays or floats) by the same rules as
    :func:`read_latent_file`: latent [B, C, h, w] or [C, h, w]; caption [B, T, D] or [T, D];
    degrade_sigma [B], a scalar or a float, in [0, 1]; float dtypes only, finite values.
    Returns CPU float32 tensors; raises :class:`InputFileError` naming ``what``."""
    given = {LATENT_KEY: latent, CAPTION_KEY: caption, SIGMA_KEY: degrade_sigma}
    tensors: dict[str, torch.Tensor] = {}
    for name, value in given.items():
        if value is None:
            continue
        t = _as_tensor(value, name, what)
        tensors[name] = t
    _check_shapes({n: tuple(t.shape) for n, t in tensors.items()}, what, config)
    for name in list(tensors):
        tensors[name] = check_finite(tensors[name].to("cpu", torch.float32), name, what)
    return _assemble(tensors, what, config, None)


def _as_tensor(value: Any, name: str, what: str) -> torch.Tensor:
    """``value`` (tensor, numpy array, Python number) as a torch tensor of a float dtype."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float32)
    if not isinstance(value, torch.Tensor):
        try:
            import numpy as np

            value = torch.from_numpy(np.asarray(value))
        except (TypeError, ValueError, RuntimeError):
            raise InputFileError(
                f"{what}: {name} is a {type(value).__name__}, expected a torch tensor or numpy array"
            ) from None
    if not value.is_floating_point():
        raise InputFileError(f"{what}: {name} has dtype {value.dtype}, expected a float tensor")
    return value.detach()


def _assemble(
    tensors: dict[str, torch.Tensor], what: str, config: NetConfig | None, backbone: str | None
) -> LatentFile:
    """Batch validated float32 tensors: unbatched latent -> B = 1, [T, D] caption and scalar
    sigma broadcast over B, captions cut to ``txt_max_length``, sigma checked in [0, 1]."""
    latent = tensors[LATENT_KEY]
    if latent.dim() == 3:
        latent = latent.unsqueeze(0)
    batch = int(latent.shape[0])

    caption = tensors.get(CAPTION_KEY)
    if caption is not None:
        if caption.dim() == 2:
            caption = caption.unsqueeze(0).expand(batch, -1, -1)
        if config is not None and caption.shape[1] > config.txt_max_length:
            caption = caption[:, : config.txt_max_length]
        caption = caption.contiguous()

    sigma = tensors.get(SIGMA_KEY)
    if sigma is None:
        sigma = torch.zeros(batch, dtype=torch.float32)
    else:
        if bool(((sigma < 0) | (sigma > 1)).any()):
            bad = sigma[(sigma < 0) | (sigma > 1)].flatten()[0].item()
            raise InputFileError(f"{what}: degrade_sigma {bad!r} is outside [0, 1]")
        sigma = sigma.reshape(-1).expand(batch).contiguous() if sigma.dim() == 0 else sigma

    return LatentFile(latent.contiguous(), caption, sigma, backbone)


def _check_header(header: SafetensorsHeader, what: str) -> list[str]:
    """Known keys only, latent present; returns the present keys in a fixed order."""
    unknown = sorted(set(header.tensors) - set(_KNOWN))
    if unknown:
        raise InputFileError(
            f"{what}: unknown tensor(s) {quote_names(unknown)}; expected only {', '.join(_KNOWN)}"
        )
    if LATENT_KEY not in header.tensors:
        have = quote_names(list(header.tensors))
        raise InputFileError(f"{what}: no 'latent' tensor (has {have}); expected latent [B, C, h, w]")
    return [k for k in _KNOWN if k in header.tensors]


def _check_shapes(shapes: Mapping[str, Sequence[int]], what: str, config: NetConfig | None) -> int:
    """Ranks, empty tensors, batch agreement and config fit, from the shapes alone (a file's
    header, or in-memory tensors); returns B."""
    shapes = {name: tuple(shapes[name]) for name in _KNOWN if name in shapes}
    for name, shape in shapes.items():
        if len(shape) not in _RANKS[name]:
            raise InputFileError(f"{what}: {name} has shape {list(shape)}, expected {_FORMS[name]}")
        if 0 in shape:
            raise InputFileError(
                f"{what}: {name} has shape {list(shape)} with a zero dimension (empty tensor)"
            )

    latent = shapes[LATENT_KEY]
    batch = latent[0] if len(latent) == 4 else 1
    for name in (CAPTION_KEY, SIGMA_KEY):
        shape = shapes.get(name)
        batched = shape is not None and len(shape) == max(_RANKS[name])
        if batched and shape[0] != batch:
            raise InputFileError(
                f"{what}: {name} has batch {shape[0]} but latent has batch {batch} "
                f"(shapes {list(shape)} and {list(latent)}); expected equal batch sizes"
            )

    if config is not None:
        channels = latent[-3]
        if channels != config.lq_latent_channels:
            raise InputFileError(
                f"{what}: latent has {channels} channels, expected {config.lq_latent_channels} for this net "
                "(wrong backbone?)"
            )
        caption = shapes.get(CAPTION_KEY)
        if caption is not None:
            tokens, width = caption[-2], caption[-1]
            if width != config.txt_embed_dim:
                raise InputFileError(
                    f"{what}: caption_embedding has width {width}, expected {config.txt_embed_dim} (txt_embed_dim)"
                )
            if tokens < config.txt_max_length:
                raise InputFileError(
                    f"{what}: caption_embedding has {tokens} tokens, expected at least txt_max_length="
                    f"{config.txt_max_length} (the net takes exactly that many; longer ones are truncated)"
                )
    return batch


def write_latent_file(
    path: str | os.PathLike[str],
    latent: torch.Tensor,
    caption: torch.Tensor | None = None,
    degrade_sigma: torch.Tensor | float | None = None,
    backbone: str | None = None,
) -> None:
    """Write a latent file atomically (tensors stored as given, made contiguous, on CPU).

    latent [B, C, h, w] or [C, h, w]; caption [B, T, D] or [T, D]; degrade_sigma [B], a
    scalar tensor or a float; backbone goes to the metadata. No validation beyond what
    safetensors needs: tests use this to write malformed files too.
    """
    tensors = {LATENT_KEY: latent}
    if caption is not None:
        tensors[CAPTION_KEY] = caption
    if degrade_sigma is not None:
        tensors[SIGMA_KEY] = (
            torch.as_tensor(degrade_sigma, dtype=torch.float32)
            if isinstance(degrade_sigma, (int, float))
            else degrade_sigma
        )
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {BACKBONE_META: backbone} if backbone is not None else None
    with atomic_write(path) as tmp:
        save_file(tensors, os.fspath(tmp), metadata=metadata)


def sample_latent(
    config: NetConfig,
    batch: int = 1,
    height: int | None = None,
    width: int | None = None,
    seed: int = 0,
    backbone: str | None = None,
) -> LatentFile:
    """A deterministic random latent file for ``config`` (smoke tests, benchmarks).

    height / width: output size in pixels (multiples of ``config.pixels_per_latent``);
    default DEFAULT_SAMPLE_SIZE rounded up to such a multiple, width defaulting to height.
    latent [B, C, h, w] and caption [B, txt_max_length, txt_embed_dim] are standard normal
    from a CPU generator seeded with ``seed``; degrade_sigma is 0.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch={batch!r}: expected an integer >= 1")
    p = config.pixels_per_latent
    if height is None:
        height = -(-DEFAULT_SAMPLE_SIZE // p) * p
    if width is None:
        width = height
    h, w = config.latent_size(height, width)
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(batch, config.lq_latent_channels, h, w, generator=gen)
    caption = torch.randn(batch, config.txt_max_length, config.txt_embed_dim, generator=gen)
    return LatentFile(latent, caption, torch.zeros(batch), backbone)
