"""``pidtrt encode-image``: image -> the LDM's diffusers VAE -> PiD latent file."""

from __future__ import annotations

from pathlib import Path

import typer

from pid_trt.cli.errors import cli_errors
from pid_trt.cli.generate import quiet_hf_logs
from pid_trt.errors import ConfigError


@cli_errors
def encode_image(
    image: Path = typer.Argument(..., help="Input image (centre-cropped to multiples of 16 pixels)."),
    vae: Path = typer.Option(
        ..., "--vae", help="Local diffusers VAE folder, or a pipeline folder with a vae/ subfolder."
    ),
    backbone: str = typer.Option(
        ..., "--backbone", help="flux, flux2, sd3, sdxl, qwenimage, zimage or zimage_turbo (the VAE's LDM)."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Latent file to write (.safetensors)."),
    degrade_sigma: float = typer.Option(
        0.0, "--degrade-sigma", help="Noise the latent to this level in [0, 1] (0: clean), stored with it."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of that noise."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda, for the VAE."),
) -> None:
    """Encode an image into a PiD latent file (latent, degrade_sigma; no caption)."""
    import torch

    from pid_trt.config import get_preset
    from pid_trt.integrations.ldm import ldm_spec
    from pid_trt.integrations.vae import encode_image as run_encode
    from pid_trt.integrations.vae import load_image, load_vae
    from pid_trt.io import write_latent_file

    spec = ldm_spec(backbone)
    if output.suffix != ".safetensors":
        raise ConfigError(f"-o {output}: expected a .safetensors latent file")
    pixels = load_image(image)  # before the VAE: a bad image fails fast
    quiet_hf_logs()
    model = load_vae(vae, spec.name, device=device)
    latent, sigma = run_encode(model, pixels, spec.name, degrade_sigma=degrade_sigma, seed=seed)
    write_latent_file(
        output, latent, None, torch.tensor([sigma], dtype=torch.float32), backbone=spec.backbone.value
    )
    h, w = latent.shape[-2:]
    ppl = get_preset(spec.backbone).config.pixels_per_latent
    typer.echo(
        f"wrote {output} (latent {list(latent.shape)} from a {pixels.shape[-1]}x{pixels.shape[-2]} image, "
        f"degrade_sigma {sigma:g}; the {spec.backbone.value} PiD decodes it to {w * ppl}x{h * ppl})"
    )
