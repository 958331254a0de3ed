"""The backend interface: bind a decode's conditioning once, then step many times."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from pid_trt.sampling import Denoiser


@dataclass(frozen=True)
class Conditioning:
    """Everything constant over one decode.

    latent: [B, C, h, w] float32 normalised LDM latent.
    caption: [B, T, D] float32 caption embedding (T = txt_max_length of the net).
    degrade_sigma: [B] float32 noise level of the latent, in [0, 1].
    height, width: output size in pixels.
    """

    latent: torch.Tensor
    caption: torch.Tensor
    degrade_sigma: torch.Tensor
    height: int
    width: int

    @property
    def batch(self) -> int:
        return int(self.latent.shape[0])


class Backend(ABC):
    """A way to evaluate the PiD network. ``bind`` does the per-decode constant work once
    (latent adapter, caption projection) and returns the per-step :class:`Denoiser`."""

    name: str = "abstract"

    @abstractmethod
    def bind(self, cond: Conditioning) -> Denoiser:
        """Prepare one decode; the returned callable maps (x [B,3,H,W], t in [0,1]) -> v."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release device memory / sessions. Idempotent."""
