"""Image -> PiD latent with the LDM's own diffusers VAE (upstream's ``from_clean`` path).

``pid/ARCHITECTURE.md`` §2.3: the PiD latent is the VAE posterior's *mean*, normalised as
the LDM normalises it:

| LDM                   | raw mean mu                 | PiD latent                                        |
|-----------------------|-----------------------------|---------------------------------------------------|
| flux                  | [B, 16, H/8, W/8]           | 0.3611 * (mu - 0.1159)                            |
| sd3                   | [B, 16, H/8, W/8]           | 1.5305 * (mu - 0.0609)                            |
| sdxl                  | [B, 4, H/8, W/8]            | 0.13025 * mu                                      |
| zimage, zimage_turbo  | [B, 16, H/8, W/8]           | scaling_factor * (mu - shift_factor) (VAE config) |
| flux2 (and klein)     | [B, 32, H/8, W/8]           | 2x2 patchify (c, pi, pj) -> [B, 128, H/16, W/16], |
|                       |                             | then (p - running_mean) / sqrt(running_var + eps) |
|                       |                             | of the VAE's ``bn``                               |
| qwenimage             | [B, 16, 1, H/8, W/8]        | (mu - latents_mean) / latents_std (VAE config)    |

(the fixed constants are upstream's ``pipeline_registry``; they equal the released VAEs'
configs). Noise is then added as the PiD net was trained (§3.3): x = (1 - s) z + s e, or
sqrt(1 - s^2) z + s e for sdxl (variance preserving). The DINOv2 / SigLIP representation
encoders are :mod:`pid_trt.integrations.rae_encoders`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from pid_trt.errors import ConfigError, InputFileError
from pid_trt.integrations.ldm import LdmSpec, ldm_spec
from pid_trt.quoting import printable

#: Input images are centre-cropped to multiples of this many pixels (upstream's from_clean).
CROP_MULTIPLE = 16

# (scale, shift) of the affine normalisations fixed by upstream (pipeline_registry).
_AFFINE = {"flux": (0.3611, 0.1159), "sd3": (1.5305, 0.0609), "sdxl": (0.13025, 0.0)}
# diffusers VAE class per LDM.
_VAE_CLASS = {
    "flux2": "AutoencoderKLFlux2",
    "flux2_klein": "AutoencoderKLFlux2",
    "qwenimage": "AutoencoderKLQwenImage",
}


def vae_class_name(backbone: str) -> str:
    """The diffusers VAE class of an LDM (AutoencoderKL unless FLUX.2 or Qwen-Image)."""
    return _VAE_CLASS.get(ldm_spec(backbone).name, "AutoencoderKL")


def _affine(vae: Any, spec: LdmSpec) -> tuple[float, float]:
    if spec.name in _AFFINE:
        return _AFFINE[spec.name]
    config = vae.config  # zimage / zimage_turbo: the VAE config, read at run time (as upstream)
    scale = getattr(config, "scaling_factor", None)
    if not isinstance(scale, (int, float)) or scale == 0:
        raise ConfigError(f"{spec.name} VAE config has scaling_factor={scale!r}: expected a non-zero number")
    return float(scale), float(getattr(config, "shift_factor", None) or 0.0)


def _bn_stats(vae: Any, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    bn = vae.bn
    mean = bn.running_mean.detach().to(device, dtype).view(1, -1, 1, 1)
    std = (bn.running_var.detach().to(device, dtype) + bn.eps).sqrt().view(1, -1, 1, 1)
    return mean, std


def _qwen_stats(vae: Any, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(vae.config.latents_mean, dtype=dtype, device=device).view(1, -1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=dtype, device=device).view(1, -1, 1, 1)
    return mean, std


def vae_to_pid(vae: Any, mean: torch.Tensor, backbone: str) -> torch.Tensor:
    """The PiD latent [B, C, h, w] float32 of the VAE posterior mean ``mean`` (see the module
    table; qwenimage's [B, 16, 1, h, w] is accepted)."""
    spec = ldm_spec(backbone)
    mu = mean.float()
    if spec.name == "qwenimage":
        if mu.dim() == 5:
            mu = mu.squeeze(2)
        m, s = _qwen_stats(vae, mu.dtype, mu.device)
        return (mu - m) / s
    if spec.packing == "flux2":
        from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline

        m, s = _bn_stats(vae, mu.dtype, mu.device)
        return (Flux2Pipeline._patchify_latents(mu) - m) / s
    scale, shift = _affine(vae, spec)
    return scale * (mu - shift)


def pid_to_vae(vae: Any, latent: torch.Tensor, backbone: str) -> torch.Tensor:
    """The inverse of :func:`vae_to_pid`, shaped for ``vae.decode``: flux2 unpatchified to
    [B, 32, H/8, W/8], qwenimage [B, 16, 1, h, w], the others [B, C, h, w]; float32."""
    spec = ldm_spec(backbone)
    z = latent.float()
    if spec.name == "qwenimage":
        m, s = _qwen_stats(vae, z.dtype, z.device)
        return (z * s + m).unsqueeze(2)
    if spec.packing == "flux2":
        from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline

        m, s = _bn_stats(vae, z.dtype, z.device)
        return Flux2Pipeline._unpatchify_latents(z * s + m)
    scale, shift = _affine(vae, spec)
    return z / scale + shift


def decode_latent(vae: Any, latent: torch.Tensor, backbone: str) -> torch.Tensor:
    """Decode a PiD latent [B, C, h, w] with the LDM's own ``vae`` (the baseline PiD replaces):
    :func:`pid_to_vae`, then ``vae.decode`` in the VAE's precision (an fp16 VAE whose config
    asks ``force_upcast`` runs in float32, as the pipelines do). Returns [B, 3, h * 8, w * 8]
    (flux2: h * 16) float32 in [-1, 1] on the CPU. A noisy latent (an early capture) is decoded
    as it is, noise included, as upstream's baseline."""
    spec = ldm_spec(backbone)
    param = next(vae.parameters())
    upcast = param.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        dtype = next(vae.parameters()).dtype
        z = pid_to_vae(vae, latent.to(param.device, torch.float32), spec.name).to(dtype)
        with torch.no_grad():
            image = vae.decode(z, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(torch.float16)
    if spec.name == "qwenimage":
        image = image[:, :, 0]
    return image.float().clamp(-1.0, 1.0).cpu()


def add_noise(latent: torch.Tensor, sigma: float, backbone: str, seed: int = 0) -> torch.Tensor:
    """Noise a clean PiD latent to level ``sigma`` in [0, 1] as PiD was trained (§3.3): flow
    form (1 - s) z + s e, or variance preserving sqrt(1 - s^2) z + s e for sdxl; e drawn
    from a CPU generator seeded with ``seed``. sigma = 0 returns ``latent`` unchanged."""
    return noise_latent(latent, sigma, seed, variance_preserving=ldm_spec(backbone).variance_preserving)


def noise_latent(
    latent: torch.Tensor, sigma: float, seed: int = 0, variance_preserving: bool = False
) -> torch.Tensor:
    """:func:`add_noise`'s formula for a latent of any PiD backbone: (1 - s) z + s e, or
    sqrt(1 - s^2) z + s e when ``variance_preserving``; e from a CPU generator seeded with
    ``seed``; sigma = 0 returns ``latent`` unchanged; sigma outside [0, 1] is a ConfigError."""
    sigma = float(sigma)
    if not 0.0 <= sigma <= 1.0 or math.isnan(sigma):
        raise ConfigError(f"degrade sigma {sigma!r}: expected a value in [0, 1]")
    if sigma == 0.0:
        return latent
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(latent.shape, generator=gen, dtype=torch.float32).to(latent.device, latent.dtype)
    keep = math.sqrt(max(0.0, 1.0 - sigma * sigma)) if variance_preserving else 1.0 - sigma
    return keep * latent + sigma * noise


def image_batch(image: Any) -> torch.Tensor:
    """An image file (read by :func:`load_image`) or a tensor [3, H, W] / [B, 3, H, W] in
    [-1, 1], as [B, 3, H, W]; InputFileError for anything else."""
    x = load_image(image) if isinstance(image, (str, os.PathLike)) else image
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or x.shape[-3] != 3:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputFileError(f"image {shape}: expected a [B, 3, H, W] tensor in [-1, 1] or an image file")
    return x.unsqueeze(0) if x.dim() == 3 else x


def load_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """An image file as [1, 3, H, W] float32 in [-1, 1], centre-cropped so that H and W are
    multiples of 16 (as upstream's from_clean)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except FileNotFoundError:
        raise InputFileError(f"image {printable(path)}: file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputFileError(
            f"image {printable(path)}: cannot read it as an image ({printable(exc)})"
        ) from None
    w, h = img.size
    cw, ch = w // CROP_MULTIPLE * CROP_MULTIPLE, h // CROP_MULTIPLE * CROP_MULTIPLE
    if cw == 0 or ch == 0:
        raise InputFileError(
            f"image {printable(path)} is {w}x{h}: expected at least {CROP_MULTIPLE} pixels a side"
        )
    if (cw, ch) != (w, h):
        left, top = (w - cw) // 2, (h - ch) // 2
        img = img.crop((left, top, left + cw, top + ch))
    import numpy as np

    pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    return pixels.permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1.0


def dtype_kwargs(dtype: torch.dtype | None) -> dict[str, Any]:
    """``from_pretrained``'s precision keyword: ``dtype`` where diffusers has it (0.42+), else
    the older ``torch_dtype`` (deprecated since)."""
    if dtype is None:
        return {}
    import diffusers.utils

    return {"dtype" if hasattr(diffusers.utils, "_resolve_dtype") else "torch_dtype": dtype}


def load_vae(
    directory: str | os.PathLike[str], backbone: str, device: str = "cpu", dtype: torch.dtype | None = None
):
    """The LDM's diffusers VAE from a local directory: a VAE folder (``config.json`` + weights)
    or a pipeline folder with a ``vae/`` subfolder. Nothing is downloaded."""
    import diffusers

    name = vae_class_name(backbone)
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"--vae {root}: not a directory (expected a diffusers VAE or pipeline folder)")
    sub = "vae" if (root / "vae" / "config.json").is_file() else None
    if sub is None and not (root / "config.json").is_file():
        raise ConfigError(
            f"--vae {root}: no config.json there or in {root / 'vae'} (expected a diffusers VAE)"
        )
    cls = getattr(diffusers, name)
    try:
        vae = cls.from_pretrained(root, subfolder=sub, local_files_only=True, **dtype_kwargs(dtype))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"--vae {root}: cannot load it as a {name} ({str(exc).splitlines()[0]})") from None
    return vae.to(device).eval()


def encode_image(
    vae: Any, image: Any, backbone: str, degrade_sigma: float = 0.0, seed: int = 0
) -> tuple[torch.Tensor, float]:
    """Encode ``image`` (a file path, or [B, 3, H, W] / [3, H, W] in [-1, 1] with H, W multiples
    of 16) with the LDM's ``vae`` into its PiD latent, noised to ``degrade_sigma`` (see
    :func:`add_noise`). Returns (latent [B, C, h, w] float32 on the CPU, degrade_sigma)."""
    spec = ldm_spec(backbone)
    expected = vae_class_name(spec.name)
    if type(vae).__name__ != expected:
        raise ConfigError(f"backbone {spec.name} needs its {expected} VAE, got a {type(vae).__name__}")
    x = image_batch(image)
    h, w = x.shape[-2:]
    if h % CROP_MULTIPLE or w % CROP_MULTIPLE:
        raise InputFileError(f"image {w}x{h}: expected width and height multiples of {CROP_MULTIPLE}")
    param = next(vae.parameters())
    x = x.to(param.device, param.dtype)
    with torch.no_grad():
        mean = vae.encode(x.unsqueeze(2) if spec.name == "qwenimage" else x).latent_dist.mean
    latent = vae_to_pid(vae, mean, spec.name)
    if latent.shape[1] != spec.channels:
        raise ConfigError(
            f"the VAE gives {latent.shape[1]}-channel PiD latents, {spec.name} {spec.channels}: "
            "is it this backbone's VAE?"
        )
    return add_noise(latent, degrade_sigma, spec.name, seed).float().cpu(), float(degrade_sigma)
