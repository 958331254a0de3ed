"""Colour drift of one image against another, in CIELAB: sRGB (IEC 61966-2-1) -> linear
light -> CIE XYZ (D65) -> CIE L*a*b* (CIE 15), written out here.

CIELAB is roughly perceptually uniform: a* runs green (negative) to magenta / red (positive),
b* blue (negative) to yellow (positive), C* = sqrt(a*^2 + b*^2) is the chroma (colourfulness)
and L* the lightness (0 black, 100 the white point). :func:`colour_drift` reports how far a
candidate image (PiD's) sits from a reference (the LDM's own VAE, upscaled to the same size)
along those axes: colour casts are what a decoder swap shows first.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from pid_trt.errors import ConfigError

#: Linear sRGB -> CIE XYZ (D65), the sRGB primaries (B. Lindbloom's derivation of IEC 61966-2-1).
SRGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
#: The D65 reference white (X, Y, Z), Y = 1.
D65_WHITE = (0.95047, 1.0, 1.08883)
#: CIE constants of the L* curve: (6/29)^3 and (29/3)^3.
_EPSILON = 216.0 / 24389.0
_KAPPA = 24389.0 / 27.0
#: The name :func:`colour_drift` reports its space by.
SPACE = "CIELAB (D65, sRGB)"


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB values in [0, 1] -> linear light: c / 12.92 up to 0.04045, else ((c + 0.055) / 1.055)^2.4."""
    c = rgb.to(torch.float64)
    return torch.where(c <= 0.04045, c / 12.92, ((c.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)


def srgb_to_xyz(rgb: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """sRGB in [0, 1] -> CIE XYZ (D65, Y of white = 1), float64, the channels on axis ``dim``
    (-3: images [..., 3, H, W]; -1: colours [..., 3])."""
    linear = srgb_to_linear(rgb).movedim(dim, -1)
    matrix = torch.tensor(SRGB_TO_XYZ, dtype=torch.float64, device=linear.device)
    return (linear @ matrix.T).movedim(-1, dim)


def srgb_to_lab(rgb: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """sRGB in [0, 1] -> CIE L*a*b* (D65), float64, the colour channels on axis ``dim``
    (-3: images [..., 3, H, W]; -1: colours [..., 3]). White (1, 1, 1) -> (100, 0, 0)."""
    if rgb.shape[dim] != 3:
        raise ConfigError(f"colours of shape {list(rgb.shape)}: expected 3 channels (R, G, B) on axis {dim}")
    xyz = srgb_to_xyz(rgb, dim).movedim(dim, -1)
    white = torch.tensor(D65_WHITE, dtype=torch.float64, device=xyz.device)
    t = xyz / white
    f = torch.where(t > _EPSILON, t.clamp(min=_EPSILON) ** (1.0 / 3.0), (_KAPPA * t + 16.0) / 116.0)
    fx, fy, fz = f.unbind(-1)
    lab = torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-1)
    return lab.movedim(-1, dim)


@dataclass(frozen=True)
class ColourDrift:
    """Colour figures of a candidate image against a reference of the same size, each the
    mean over pixels (and images) of candidate minus reference, in CIELAB units:

    mean_chroma_shift: ΔC* (positive: the candidate is more colourful);
    green_magenta_bias: Δa* (positive: toward magenta, negative: toward green);
    blue_yellow_bias: Δb* (positive: toward yellow, negative: toward blue);
    colour_cast: the length of the mean (Δa*, Δb*), the overall tint whatever its hue;
    mean_lightness_shift: ΔL*; mean_delta_e: the mean CIE76 colour difference
    sqrt(ΔL*^2 + Δa*^2 + Δb*^2) (about 2.3: just noticeable).
    """

    mean_chroma_shift: float
    green_magenta_bias: float
    blue_yellow_bias: float
    colour_cast: float
    mean_lightness_shift: float
    mean_delta_e: float
    space: str = SPACE

    def as_dict(self) -> dict[str, float | str]:
        """The figures as JSON-ready numbers (rounded to 4 decimals) and the space's name."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def colour_drift(candidate: torch.Tensor, reference: torch.Tensor) -> ColourDrift:
    """The :class:`ColourDrift` of ``candidate`` against ``reference``: images [B, 3, H, W]
    (or [3, H, W]) of one shape, floats in [-1, 1] (clamped), as decoders give them."""
    if candidate.shape != reference.shape or candidate.dim() not in (3, 4) or candidate.shape[-3] != 3:
        raise ConfigError(
            f"colour drift of images {list(candidate.shape)} and {list(reference.shape)}: "
            "expected two [B, 3, H, W] images of one shape"
        )

    def lab(image: torch.Tensor) -> torch.Tensor:
        return srgb_to_lab((image.detach().cpu().to(torch.float64).clamp(-1.0, 1.0) + 1.0) / 2.0)

    a, b = lab(candidate), lab(reference)
    d = a - b
    dl, da, db = d.select(-3, 0), d.select(-3, 1), d.select(-3, 2)
    chroma = torch.hypot(a.select(-3, 1), a.select(-3, 2)) - torch.hypot(b.select(-3, 1), b.select(-3, 2))
    mean_a, mean_b = float(da.mean()), float(db.mean())
    return ColourDrift(
        mean_chroma_shift=float(chroma.mean()),
        green_magenta_bias=mean_a,
        blue_yellow_bias=mean_b,
        colour_cast=math.hypot(mean_a, mean_b),
        mean_lightness_shift=float(dl.mean()),
        mean_delta_e=float(torch.sqrt(dl**2 + da**2 + db**2).mean()),
    )
