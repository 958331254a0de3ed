"""Caption files (docs/design.md §3, ``pidtrt encode-caption``): one tensor ``caption_embedding``
[N, T, D] float32 (row i = prompt i), the prompts as a JSON list in the metadata."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import torch
from safetensors.torch import save_file

from pid_trt.atomic import atomic_write
from pid_trt.config import NetConfig
from pid_trt.errors import ConfigError, InputFileError
from pid_trt.io.latent import CAPTION_KEY, LatentFile, latent_from_tensors
from pid_trt.io.stfile import load_float_tensors, open_input, require_only_tensor
from pid_trt.quoting import printable
from pid_trt.safetensors_header import read_header_from

PROMPTS_META = "prompts"


def write_caption_file(
    path: str | os.PathLike[str],
    embedding: torch.Tensor,
    prompts: Sequence[str],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``embedding`` [N, T, D] (as float32) and ``prompts`` (N strings) atomically."""
    meta = {PROMPTS_META: json.dumps(list(prompts), ensure_ascii=False), **(metadata or {})}
    tensor = embedding.detach().to("cpu", torch.float32).contiguous()
    with atomic_write(path) as tmp:
        save_file({CAPTION_KEY: tensor}, os.fspath(tmp), metadata=meta)


def read_caption_file(path: str | os.PathLike[str], config: NetConfig, batch: int) -> torch.Tensor:
    """A caption file's embedding for a decode of ``batch`` rows: [B, txt_max_length, D]
    float32. One row (or [T, D]) is repeated over the batch; otherwise N must equal B. Width,
    length and values are checked by the latent file's caption rules."""
    what = f"caption file {printable(path)}"
    with open_input(path, what) as f:
        header = read_header_from(f, what, InputFileError)
        require_only_tensor(header, CAPTION_KEY, what, made_by="`pidtrt encode-caption`")
        caption = load_float_tensors(f, header, [CAPTION_KEY], what)[CAPTION_KEY]
    if caption.dim() == 3 and caption.shape[0] == 1:
        caption = caption[0]
    if caption.dim() == 3 and caption.shape[0] != batch:
        raise InputFileError(
            f"{what}: {caption.shape[0]} caption rows for a latent of batch {batch}: expected 1 or {batch}"
        )
    stand_in = torch.zeros(batch, config.lq_latent_channels, 1, 1)
    return latent_from_tensors(stand_in, caption, config=config, what=what).caption


def caption_for_latent(
    lat: LatentFile,
    latent_path: str | os.PathLike[str],
    config: NetConfig,
    *,
    prompt: bool = False,
    caption_file: str | os.PathLike[str] | None = None,
) -> torch.Tensor | None:
    """The caption embedding a decode of latent file ``latent_path`` uses: the file's own, or
    ``caption_file``'s ([B, T, D]), or None (a prompt, or no caption at all). A file that
    already holds a caption refuses ``--prompt`` / ``--caption`` (never silently overridden)."""
    if lat.caption is not None and (prompt or caption_file is not None):
        given = "--prompt" if prompt else "--caption"
        raise ConfigError(
            f"latent file {printable(latent_path)} already has a caption_embedding: drop {given}, or write "
            "the latent without one"
        )
    if caption_file is not None:
        return read_caption_file(caption_file, config, lat.batch)
    return lat.caption


#: The tensor names a null-caption file may hold: ours, and the community format's (bf16).
NULL_CAPTION_KEYS = (CAPTION_KEY, "null_caption_embs")


def read_null_caption_file(path: str | os.PathLike[str], config: NetConfig) -> torch.Tensor:
    """A null caption file (``pidtrt encode-caption --null``: ``caption_embedding`` [1, T, D];
    or the community format: ``null_caption_embs`` [1, T, D], bf16) as [txt_max_length, D]
    float32, its width and length checked against ``config`` like any caption."""
    what = f"null caption file {os.fspath(path)}"
    with open_input(path, what) as f:
        header = read_header_from(f, what, InputFileError)
        names = list(header.tensors)
        if len(names) != 1 or names[0] not in NULL_CAPTION_KEYS:
            raise InputFileError(
                f"{what}: has tensor(s) {', '.join(map(repr, names)) or 'none'}; expected exactly one, "
                f"{NULL_CAPTION_KEYS[0]!r} (from `pidtrt encode-caption --null`) or {NULL_CAPTION_KEYS[1]!r}"
            )
        caption = load_float_tensors(f, header, names, what)[names[0]]
    if caption.dim() == 3 and caption.shape[0] == 1:
        caption = caption[0]
    if caption.dim() != 2:
        raise InputFileError(
            f"{what}: tensor {names[0]!r} has shape {list(caption.shape)}, expected [1, T, D]"
        )
    stand_in = torch.zeros(1, config.lq_latent_channels, 1, 1)
    return latent_from_tensors(stand_in, caption, config=config, what=what).caption[0]
