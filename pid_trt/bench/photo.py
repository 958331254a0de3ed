"""A photo-like synthetic image, for measuring image encoders and the host pipeline.

Noise compresses like nothing a decoder produces, and a flat image like nothing at all; a
photograph sits between: most energy in low spatial frequencies (amplitude ~ 1/f), some
sharp edges, and a little sensor-like grain. :func:`photo_like` builds such an image from
a seed, cheaply (a few bilinear upsamplings), so benchmarks can make one per size once,
off any timed path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def photo_like(height: int, width: int, *, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """[batch, 3, height, width] float32 in [-1, 1], photo-like (see the module docstring).

    Octaves of random colour fields upsampled bilinearly (amplitude halving per octave, so
    ~1/f), a few hard-edged discs, and grain of ~1.5 levels of 255. Deterministic in ``seed``.
    """
    if height < 1 or width < 1 or batch < 1:
        raise ValueError(f"photo_like({height}, {width}, batch={batch}): expected positive sizes")
    gen = torch.Generator().manual_seed(seed)
    image = torch.zeros(batch, 3, height, width)
    amplitude, cells = 0.6, 3
    while cells <= max(height, width) // 2:
        grid = torch.randn(batch, 3, cells, cells, generator=gen)
        grid = grid * 0.3 + grid.mean(dim=1, keepdim=True) * 0.7  # mostly luminance, some colour
        image += amplitude * F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
        amplitude, cells = amplitude * 0.5, cells * 2
    ys = torch.linspace(0, 1, height).view(1, 1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, 1, width)
    aspect = width / height
    for _ in range(6):  # hard edges: discs of one colour over the texture
        cy, cx, radius = torch.rand(3, generator=gen).tolist()
        colour = (torch.rand(batch, 3, 1, 1, generator=gen) * 2 - 1) * 0.6
        inside = ((ys - cy) ** 2 + ((xs - cx) * aspect) ** 2) < (0.05 + 0.2 * radius) ** 2
        image = torch.where(inside, 0.5 * image + colour, image)
    image += torch.randn(image.shape, generator=gen) * (1.5 / 127.5)
    return image.clamp_(-1.0, 1.0)
