"""Which caption embedding a decode uses, and what the run says about it.

Every front end (``pidtrt decode`` for one file, many files and torchrun ranks,
:class:`pid_trt.Decoder`, the diffusers integration, ``pidtrt serve``) goes through
:meth:`CaptionChooser.choose`, so one rule holds everywhere:

1. a prompt: its embedding by the caption encoder (through the caption cache and the
   persistent store, :mod:`pid_trt.captions`) -- source ``prompt``;
2. a caption embedding (the latent file's, ``--caption FILE``, ``caption_embedding=``) --
   source ``file``;
3. neither, for a net that needs a caption (:attr:`pid_trt.netspec.NetSpec.needs_caption`):
   the **null caption**, the recipe's encoding of "" (PiD was trained with 10 % of its
   captions dropped to ""), from, in order:

   a. ``--null-caption FILE`` / ``$PIDTRT_NULL_CAPTION`` / ``Decoder.load(null_caption=...)``
      (a file: ours, ``caption_embedding`` [1, T, D], or the community format,
      ``null_caption_embs`` [1, T, D] bf16; or a tensor [T, D] / [1, T, D]) -- ``null (FILE)``;
   b. the persistent caption store: the configured encoder's entry for "" or, with no
      encoder configured, any stored null caption of the net's width -- ``null (stored)``;
   c. the text encoder, when one is configured: it encodes "" once (then stored) --
      ``null (encoded)``;
   d. else a one-line error naming both ways out (``--null-caption FILE``, ``--text-encoder DIR``);
4. neither, for a random-weight stand-in net: the null caption when one is given (3a), else a
   seeded random caption -- ``random stand-in``.

The null caption is cut to the net's ``txt_max_length`` and its width checked, as a caption
file's. It is read (or encoded) once per chooser and kept.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pid_trt.captions import CaptionProvider
from pid_trt.config import NetConfig
from pid_trt.errors import ConfigError, InputFileError
from pid_trt.netspec import NetSpec, stand_in_caption
from pid_trt.quoting import printable

__all__ = ["NULL_CAPTION_ENV", "Caption", "CaptionChooser", "null_caption_hint"]

#: Environment variable naming the null-caption file when none is given.
NULL_CAPTION_ENV = "PIDTRT_NULL_CAPTION"


@dataclass(frozen=True)
class Caption:
    """A decode's caption: ``embedding`` [B, T, D] float32 on the CPU, and ``source``:
    ``prompt`` | ``file`` | ``null (FILE)`` | ``null (stored)`` | ``null (encoded)`` |
    ``random stand-in``."""

    embedding: torch.Tensor
    source: str


def null_caption_hint(config: NetConfig) -> str:
    """The two ways out of a missing caption, for one-line errors."""
    return (
        "pass --null-caption FILE (the null caption: `pidtrt encode-caption --null --text-encoder DIR -o FILE`, "
        f"or set {NULL_CAPTION_ENV}) or --text-encoder DIR (a local Gemma-2-2B-it, to encode it); "
        f"or give a caption: --prompt TEXT, --caption FILE, or tensor caption_embedding "
        f"[B, {config.txt_max_length}, {config.txt_embed_dim}] in the latent file"
    )


class CaptionChooser:
    """The caption rule (module docstring) for one net. ``null_caption``: a file path, a
    tensor [T, D] / [1, T, D], or None ($PIDTRT_NULL_CAPTION, read now). Thread-safe."""

    def __init__(self, spec: NetSpec, provider: CaptionProvider, null_caption: Any = None) -> None:
        self.spec = spec
        self.provider = provider
        if null_caption is None:
            null_caption = os.environ.get(NULL_CAPTION_ENV) or None
        if null_caption is not None and not isinstance(null_caption, (str, os.PathLike, torch.Tensor)):
            raise ConfigError(
                f"null_caption: expected a file path or a tensor [T, D], got {type(null_caption).__name__}"
            )
        self._given = null_caption
        self._null: tuple[torch.Tensor, str] | None = None
        self._lock = threading.Lock()

    @property
    def given(self) -> str | None:
        """The null-caption file named (``--null-caption`` / the env), or None."""
        return os.fspath(self._given) if isinstance(self._given, (str, os.PathLike)) else None

    def choose(
        self,
        batch: int,
        caption: torch.Tensor | None = None,
        prompt: Any = None,
        seed: int = 0,
        encode: Any = None,
    ) -> Caption:
        """The caption of a decode of ``batch`` rows: ``caption`` [B, T, D] (checked already),
        else ``prompt`` (``encode(prompt, batch)`` makes its embedding), else the null caption
        or a stand-in (module docstring)."""
        if prompt is not None:
            return Caption(encode(prompt, batch), "prompt")
        if caption is not None:
            return Caption(caption, "file")
        if not self.spec.needs_caption and self._given is None:
            return Caption(stand_in_caption(self.spec, batch, seed), "random stand-in")
        row, source = self.null()
        return Caption(row.unsqueeze(0).expand(batch, -1, -1).contiguous(), source)

    def null(self) -> tuple[torch.Tensor, str]:
        """The null caption [txt_max_length, D] float32 and its source (read once, then kept)."""
        with self._lock:
            if self._null is None:
                self._null = self._find()
            return self._null

    def _find(self) -> tuple[torch.Tensor, str]:
        config = self.spec.config
        given = self._given
        if isinstance(given, torch.Tensor):
            return self._checked(given.detach().float().cpu(), "null_caption tensor"), "null (given tensor)"
        if given is not None:
            from pid_trt.io.caption import read_null_caption_file

            return read_null_caption_file(Path(given), config), f"null ({printable(given)})"
        stored = self.provider.stored_null(config.txt_embed_dim)
        if stored is not None:
            return self._checked(stored[0], f"stored null caption {stored[1]}"), "null (stored)"
        if self.provider.available:
            emb, _ = self.provider.encode_traced([""])
            return self._checked(emb[0], "the text encoder's null caption"), "null (encoded)"
        raise InputFileError(
            f"no caption for the {self.spec.name} net, which needs one: {null_caption_hint(config)}"
        )

    def _checked(self, caption: torch.Tensor, what: str) -> torch.Tensor:
        """[T, D] / [1, T, D] checked and cut like a caption file's: [txt_max_length, D]."""
        from pid_trt.io import latent_from_tensors

        if caption.dim() == 3 and caption.shape[0] == 1:
            caption = caption[0]
        if caption.dim() != 2:
            raise ConfigError(f"{what}: shape {list(caption.shape)}, expected [T, D] or [1, T, D]")
        stand_in = torch.zeros(1, self.spec.config.lq_latent_channels, 1, 1)
        return latent_from_tensors(stand_in, caption, config=self.spec.config, what=what).caption[0]
