"""A diffusers pipeline's latent -> the PiD latent, and the frame PiD was trained in
(``pid/ARCHITECTURE.md`` §2.3 "Packing from diffusers outputs", §3.3).

The pipelines' ``output_type="latent"`` (and their loop latents) are already *normalised*
(scaled / shifted / BN-normalised: what the VAE decode un-does), which is what PiD takes:
only the packing is undone, with diffusers' own helpers (imported when needed).
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from pid_trt.errors import ConfigError, InputFileError
from pid_trt.integrations.ldm import LdmSpec, ldm_spec


# ---------------------------------------------------------------------------------- layout
def _scale_factor(pipe: Any) -> int:
    f = getattr(pipe, "vae_scale_factor", None)
    if isinstance(f, bool) or not isinstance(f, int) or f < 1:
        raise ConfigError(f"pipeline vae_scale_factor={f!r}: expected a positive integer")
    return f


def _vae_channels(pipe: Any, spec: LdmSpec) -> int:
    """Raw latent channels of the pipeline's VAE when its config says (z_dim for Qwen-Image),
    else the LDM's: 16, 4 or 32 (flux2, before the 2x2 patchify)."""
    config = getattr(getattr(pipe, "vae", None), "config", None)
    for key in ("latent_channels", "z_dim"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return spec.channels // 4 if spec.packing == "flux2" else spec.channels


def _pixels(name: str, value: Any, least: int) -> int:
    """An image size in pixels as an int (numpy / torch integers accepted), at least ``least``."""
    try:
        number = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        number = None
    if number is None or number < least:
        raise ConfigError(f"{name}={value!r}: expected the pipeline's image size in pixels (>= {least})")
    return number


def _latent_tensor(latents: Any) -> torch.Tensor:
    if hasattr(latents, "images") and not isinstance(latents, torch.Tensor):
        latents = latents.images  # a pipeline output object
    if isinstance(latents, (list, tuple)) and latents and isinstance(latents[0], torch.Tensor):
        latents = torch.stack(list(latents))
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
        raise InputFileError(f"latents: expected a float torch tensor, got {type(latents).__name__}")
    return latents


def pid_latent(pipe: Any, latents: Any, backbone: str, height: int, width: int) -> torch.Tensor:
    """The PiD latent [B, C, h, w] float32 of a pipeline's latent (§2.3 "Packing from
    diffusers outputs"), on the latent's device.

    height, width: the pipeline's image size in pixels. Reads ``pipe.vae_scale_factor`` (f)
    and, for a raw FLUX.2 latent, ``pipe.vae.bn`` (and the VAE's latent channel count, when
    its config has one). With n = height // (2 f), m = width // (2 f):

    - flux: packed [B, n*m, 4C] -> [B, C, 2n, 2m] (``FluxPipeline._unpack_latents``);
    - flux2: packed [B, n*m, 128] -> [B, 128, n, m] in the pipeline's position-id order
      (``Flux2Pipeline._prepare_latent_ids`` / ``_unpack_latents_with_ids``); a raw
      [B, 32, 2n, 2m] (FLUX.2-klein's output) -> 2x2 patchify, then normalised with the
      VAE's BatchNorm statistics (running mean, running var, eps);
    - qwenimage: packed [B, n*m, 4C] -> [B, C, 1, 2n, 2m] (``QwenImagePipeline._unpack_latents``)
      -> time axis dropped; [B, C, 1, h, w] is accepted too;
    - sd3, sdxl ([B, C, height // f, width // f]), zimage, zimage_turbo ([B, C, 2n, 2m]):
      unchanged.

    An already unpacked latent of the right shape is returned as is. Anything else raises a
    one-line :class:`~pid_trt.errors.InputFileError` naming the shape and the one expected.
    """
    spec = ldm_spec(backbone)
    f = _scale_factor(pipe)
    height, width = _pixels("height", height, 2 * f), _pixels("width", width, 2 * f)
    x = _latent_tensor(latents)
    n, m = height // (2 * f), width // (2 * f)
    c = _vae_channels(pipe, spec)
    shape = list(x.shape)

    def bad(expected: str) -> InputFileError:
        return InputFileError(
            f"{spec.name} latent of shape {shape} does not fit a {width}x{height} image "
            f"(vae_scale_factor {f}): expected {expected}"
        )

    if spec.packing == "flux":
        from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

        if x.dim() == 4 and shape[1:] == [c, 2 * n, 2 * m]:
            return x.float()
        if x.dim() != 3 or shape[1:] != [n * m, 4 * c]:
            raise bad(f"packed [B, {n * m}, {4 * c}]")
        return FluxPipeline._unpack_latents(x, height, width, f).float()

    if spec.packing == "qwenimage":
        from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline

        if x.dim() == 5 and shape[1:] == [c, 1, 2 * n, 2 * m]:
            return x.squeeze(2).float()
        if x.dim() == 4 and shape[1:] == [c, 2 * n, 2 * m]:
            return x.float()
        if x.dim() != 3 or shape[1:] != [n * m, 4 * c]:
            raise bad(f"packed [B, {n * m}, {4 * c}]")
        return QwenImagePipeline._unpack_latents(x, height, width, f).squeeze(2).float()

    if spec.packing == "flux2":
        from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline

        if x.dim() == 4 and shape[1:] == [4 * c, n, m]:
            return x.float()
        if x.dim() == 4 and shape[1:] == [c, 2 * n, 2 * m]:
            return _normalise_raw_flux2(pipe, Flux2Pipeline._patchify_latents(x.float()))
        if x.dim() != 3 or shape[1:] != [n * m, 4 * c]:
            raise bad(f"packed [B, {n * m}, {4 * c}] or raw [B, {c}, {2 * n}, {2 * m}]")
        ids = Flux2Pipeline._prepare_latent_ids(torch.zeros(shape[0], 1, n, m)).to(x.device)
        out = Flux2Pipeline._unpack_latents_with_ids(x, ids)
        return (out if isinstance(out, torch.Tensor) else torch.stack(list(out))).float()

    grid = [height // f, width // f] if spec.name in ("sd3", "sdxl") else [2 * n, 2 * m]
    if x.dim() != 4 or shape[1:] != [c, *grid]:
        raise bad(f"[B, {c}, {grid[0]}, {grid[1]}]")
    return x.float()


def _normalise_raw_flux2(pipe: Any, patched: torch.Tensor) -> torch.Tensor:
    bn = getattr(getattr(pipe, "vae", None), "bn", None)
    if bn is None or getattr(bn, "running_mean", None) is None:
        raise ConfigError(
            "a raw FLUX.2 latent needs the pipeline's VAE BatchNorm (pipe.vae.bn) to normalise it"
        )
    if int(bn.running_mean.numel()) != patched.shape[1]:
        raise InputFileError(
            f"flux2 raw latent patchifies to {patched.shape[1]} channels but pipe.vae.bn has "
            f"{int(bn.running_mean.numel())}: expected equal"
        )
    mean = bn.running_mean.detach().to(patched.device, patched.dtype).view(1, -1, 1, 1)
    std = (bn.running_var.detach().to(patched.device, patched.dtype) + bn.eps).sqrt().view(1, -1, 1, 1)
    return (patched - mean) / std


# ---------------------------------------------------------------------------------- frame
def to_pid_frame(latent: Any, sigma: Any, backbone: str) -> tuple[Any, Any]:
    """(latent, sigma) in the frame PiD was trained on (§3.3).

    Flow-matching LDMs (flux, flux2, sd3, qwenimage, zimage, zimage_turbo) already hold
    x = (1 - s) x0 + s e with s in [0, 1]: returned unchanged. SDXL's Euler scheduler holds
    the variance-exploding x = x0 + s e (s up to ~15); the same noise in the variance-
    preserving frame is x / sqrt(s^2 + 1) with sigma s / sqrt(s^2 + 1). ``sigma``: a float,
    a 0-d tensor or a [B] tensor (one per row of ``latent``, any layout with B first);
    returned in the same form.
    """
    spec = ldm_spec(backbone)
    if not spec.variance_preserving:
        return latent, sigma
    if isinstance(sigma, torch.Tensor) and sigma.dim() > 0:
        s = sigma.to(torch.float64)
        denom = (s * s + 1.0).sqrt()
        scale = denom.to(latent.device, latent.dtype).view(-1, *([1] * (latent.dim() - 1)))
        return latent / scale, (s / denom).to(sigma.dtype)
    s = float(sigma)
    denom = (s**2 + 1.0) ** 0.5
    out_sigma = s / denom
    if isinstance(sigma, torch.Tensor):
        out_sigma = torch.tensor(out_sigma, dtype=sigma.dtype, device=sigma.device)
    return latent / denom, out_sigma
