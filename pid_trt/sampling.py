"""The released 4-step distilled PiD sampler, stateless, over any :class:`Denoiser`.

Flow-matching convention: ``x_t = (1 - t) * x0 + t * eps``; the network predicts the
velocity ``v = eps - x0``; t = 1 is noise, t = 0 is the clean image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

#: The distilled student's timesteps (fraction of the flow, not x1000).
RELEASED_T_LIST: tuple[float, ...] = (0.999, 0.866, 0.634, 0.342, 0.0)
#: The single-step student's timestep.
ONE_STEP_T: float = 1.0
#: The network sees ``t * TIMESCALE``.
TIMESCALE: float = 1000.0


class Denoiser(Protocol):
    """One network evaluation with one decode's conditioning already bound.

    ``x``: [B, 3, H, W] float32 noisy image; ``t``: flow time in [0, 1] (not x1000).
    Returns the velocity [B, 3, H, W] float32 on the device of ``x``.
    """

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor: ...


def timesteps(steps: int = 4) -> tuple[float, ...]:
    """The t-list for ``steps`` network calls, ending with 0.

    4 gives the released list; k != 4 indexes it at round(linspace(0, 4, k + 1)) (half to
    even, as upstream); 1 is the single-step student at t = 1.0.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: expected an integer >= 1")
    if steps == 1:
        return (ONE_STEP_T, 0.0)
    n = len(RELEASED_T_LIST) - 1
    idx = torch.linspace(0, n, steps + 1, dtype=torch.float64).round().long().tolist()
    return tuple(RELEASED_T_LIST[i] for i in idx)


def draw_noise(
    shape: Sequence[int], steps: int = 4, seed: int = 0, device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """All Gaussian draws of one decode, up front: [initial, re-noise after step 1, ...].

    ``steps`` draws of float32 ``shape`` ([B, 3, H, W]) from one CPU generator seeded with
    ``seed`` (so a seed gives the same images on every backend and device), then moved to
    ``device``. Drawing up front lets a GPU decode run without host syncs between steps.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    n = len(timesteps(steps)) - 1
    return [torch.randn(*shape, generator=gen, dtype=torch.float32).to(device) for _ in range(n)]


def sample(denoiser: Denoiser, noise: Sequence[torch.Tensor], steps: int = 4) -> torch.Tensor:
    """Run the distilled sampler; returns the image [B, 3, H, W] float32 clamped to [-1, 1].

    ``noise[0]`` is the initial noise, ``noise[i]`` the re-noise draw after step i; exactly
    ``steps`` tensors are needed. x0 = x - t * v is computed in float64 and cast back.
    """
    ts = timesteps(steps)
    if len(noise) != len(ts) - 1:
        raise ValueError(f"noise has {len(noise)} draws: expected {len(ts) - 1} for {steps} step(s)")
    x = noise[0]
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
        v = denoiser(x, t)
        x0 = (x.double() - t * v.double()).to(x.dtype)
        if t_next > 0:
            x = (1.0 - t_next) * x0 + t_next * noise[i + 1]
        else:
            x = x0
    return x.clamp(-1.0, 1.0)
