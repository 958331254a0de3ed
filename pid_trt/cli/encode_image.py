"""``pidtrt encode-image``: image -> the LDM's diffusers VAE, or the dinov2 / siglip
representation encoder -> PiD latent file."""

from __future__ import annotations

from pathlib import Path

import typer

from pid_trt.cli.errors import cli_errors
from pid_trt.cli.generate import quiet_hf_logs
from pid_trt.errors import ConfigError


@cli_errors
def encode_image(
    image: Path = typer.Argument(..., help="Input image (centre-cropped to multiples of 16 pixels)."),
    vae: Path | None = typer.Option(
        None,
        "--vae",
        help="Local diffusers VAE folder, or a pipeline folder with a vae/ subfolder (the diffusers LDMs).",
    ),
    backbone: str = typer.Option(
        ...,
        "--backbone",
        help="flux, flux2, sd3, sdxl, qwenimage, zimage or zimage_turbo (the VAE's LDM), "
        "or dinov2 / siglip (a representation encoder, --encoder).",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Latent file to write (.safetensors)."),
    encoder: Path | None = typer.Option(
        None,
        "--encoder",
        help="dinov2 / siglip: local transformers folder of DINOv2-B with registers or SigLIP-2 So400M/14-224.",
    ),
    rae_stats: Path | None = typer.Option(
        None,
        "--rae-stats",
        help="dinov2: RAE latent statistics (upstream's stat.pt, or safetensors with mean and var).",
    ),
    degrade_sigma: float = typer.Option(
        0.0, "--degrade-sigma", help="Noise the latent to this level in [0, 1] (0: clean), stored with it."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of that noise."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda, for the VAE or encoder."),
) -> None:
    """Encode an image into a PiD latent file (latent, degrade_sigma; no caption)."""
    from pid_trt.integrations.rae_encoders import is_rae_backbone

    if output.suffix != ".safetensors":
        raise ConfigError(f"-o {output}: expected a .safetensors latent file")
    if is_rae_backbone(backbone):
        _encode_rae(image, backbone, encoder, rae_stats, vae, output, degrade_sigma, seed, device)
    else:
        _encode_vae(image, backbone, vae, encoder, rae_stats, output, degrade_sigma, seed, device)


def _encode_vae(image, backbone, vae, encoder, rae_stats, output, degrade_sigma, seed, device) -> None:
    import torch

    from pid_trt.config import get_preset
    from pid_trt.integrations.ldm import ldm_spec
    from pid_trt.integrations.vae import encode_image as run_encode
    from pid_trt.integrations.vae import load_image, load_vae
    from pid_trt.io import write_latent_file

    spec = ldm_spec(backbone)
    for flag, value in (("--encoder", encoder), ("--rae-stats", rae_stats)):
        if value is not None:
            raise ConfigError(
                f"{flag} is for --backbone dinov2 / siglip; {spec.name} encodes with its VAE (--vae)"
            )
    if vae is None:
        raise ConfigError(f"--backbone {spec.name} encodes with the LDM's VAE: pass --vae DIR")
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


def _encode_rae(image, backbone, encoder, rae_stats, vae, output, degrade_sigma, seed, device) -> None:
    import torch

    from pid_trt.config import get_preset
    from pid_trt.integrations.rae_encoders import (
        check_image_size,
        check_stats,
        encode_image_rae,
        load_rae_encoder,
        rae_recipe,
        read_encoder_spec,
        read_rae_stats,
    )
    from pid_trt.integrations.vae import load_image, noise_latent
    from pid_trt.io import write_latent_file

    recipe = rae_recipe(backbone)
    name = recipe.backbone.value
    if vae is not None:
        raise ConfigError(
            f"--backbone {name} encodes with its {recipe.title} encoder: pass --encoder DIR, not --vae"
        )
    if encoder is None:
        raise ConfigError(
            f"--backbone {name} needs --encoder DIR (a local {recipe.title} folder, e.g. {recipe.example})"
        )
    if recipe.needs_stats and rae_stats is None:
        raise ConfigError(
            f"--backbone {name} needs --rae-stats FILE (the RAE latent statistics, upstream's stat.pt)"
        )
    if not recipe.needs_stats and rae_stats is not None:
        raise ConfigError(f"--rae-stats is for --backbone dinov2; {name} latents take no statistics")
    noise_latent(torch.zeros(1), degrade_sigma)  # a bad sigma fails before anything loads
    # Everything cheap first: the image, the statistics, the folder's config; then the weights.
    pixels = load_image(image)
    stats = read_rae_stats(rae_stats) if rae_stats is not None else None
    spec = read_encoder_spec(encoder, recipe.backbone)
    check_stats(spec, stats)
    check_image_size(spec, int(pixels.shape[-1]), int(pixels.shape[-2]), what=f"image {image}")
    model = load_rae_encoder(encoder, recipe.backbone, stats=stats, device=device)
    latent, sigma = encode_image_rae(model, pixels, degrade_sigma=degrade_sigma, seed=seed)
    write_latent_file(output, latent, None, torch.tensor([sigma], dtype=torch.float32), backbone=name)
    h, w = latent.shape[-2:]
    ppl = get_preset(recipe.backbone).config.pixels_per_latent
    typer.echo(
        f"wrote {output} (latent {list(latent.shape)} from a {pixels.shape[-1]}x{pixels.shape[-2]} image "
        f"through the {recipe.title} encoder at {spec.input_size}x{spec.input_size}, degrade_sigma {sigma:g}; "
        f"the {name} PiD decodes it to {w * ppl}x{h * ppl})"
    )
