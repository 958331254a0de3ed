"""Images -> PiD latent files: the encoder (the LDM's diffusers VAE, or the dinov2 / siglip
representation encoder with its RAE recipe), an image's latent noised at each sigma of a
sweep, and the caption of the image's prompt (``pidtrt encode-image``).

:class:`ImageSource` checks everything cheap first (flags, statistics, the encoder folder's
config, the image's size) and loads weights on the first image; :meth:`ImageSource.write`
encodes one image once and writes one latent file per sigma.
"""

from __future__ import annotations

import math
from pathlib import Path

from pid_trt.errors import ConfigError, InputFileError
from pid_trt.integrations.diffusers import quiet_hf_logs
from pid_trt.quoting import printable

#: Suffixes ``{stem}`` drops from an image's name.
IMAGE_STRIP = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".PNG", ".JPG", ".JPEG")


def parse_sigmas(values: list[str] | None) -> list[float]:
    """``--degrade-sigma`` values (repeated and/or comma-separated) as floats in [0, 1], each
    once, in the given order; [0.0] when none. ConfigError for anything else."""
    sigmas: list[float] = []
    for value in values or ["0"]:
        for part in str(value).split(","):
            try:
                s = float(part)
            except ValueError:
                raise ConfigError(f"--degrade-sigma {part.strip()!r}: expected a number in [0, 1]") from None
            if math.isnan(s) or not 0.0 <= s <= 1.0:
                raise ConfigError(f"degrade sigma {s!r}: expected a value in [0, 1]")
            if s not in sigmas:
                sigmas.append(s)
    return sigmas


def sigma_outputs(output: Path, sigmas: list[float]) -> list[tuple[Path, float]]:
    """The files one image writes: ``output`` for one sigma; else ``<stem>_sigma<σ:.3f><suffix>``
    per sigma (upstream's ``sigma_0.200`` label), in the given order."""
    if len(sigmas) == 1:
        return [(output, sigmas[0])]
    return [(output.with_name(f"{output.stem}_sigma{s:.3f}{output.suffix}"), s) for s in sigmas]


class ImageSource:
    """The loaded encoder (a diffusers VAE or a representation encoder) and the optional
    caption encoder: :meth:`write` encodes one image once and writes a latent per sigma."""

    def __init__(self, name, backbone, check, clean, noise, captions) -> None:
        self.name, self.backbone = name, backbone
        self.check, self._clean, self._noise, self._captions = check, clean, noise, captions

    @classmethod
    def open(cls, backbone, vae, encoder, rae_stats, text_encoder, text_dtype, device) -> ImageSource:
        from pid_trt.integrations.rae_encoders import is_rae_backbone

        if is_rae_backbone(backbone):
            parts = open_rae(backbone, encoder, rae_stats, vae, device)
        else:
            parts = open_vae(backbone, vae, encoder, rae_stats, device)
        captions = None
        if text_encoder is not None:  # loaded on the first prompt the caption store does not hold
            from pid_trt.caption_store import CaptionStore
            from pid_trt.captions import CaptionProvider
            from pid_trt.text import resolve_text_encoder_source

            source = resolve_text_encoder_source(text_encoder)
            captions = CaptionProvider(
                source, device=device, dtype=text_dtype, keep=True, store=CaptionStore.default()
            )
        return cls(*parts, captions)

    def write(self, sample, targets: list[tuple[Path, float]], seed: int) -> str:
        """Encode ``sample`` and write each (file, sigma) of ``targets`` in order; returns the
        one-file message."""
        import torch

        from pid_trt.config import get_preset
        from pid_trt.io import write_latent_file

        self.check(sample.image)
        caption = None
        if self._captions is not None:
            if sample.prompt is None:
                raise InputFileError(
                    f"image {printable(sample.image)}: no prompt for its caption (give --prompt or a manifest prompt)"
                )
            caption = self._captions.encode([sample.prompt])
        latent, (w, h), how = self._clean(sample.image)
        for path, sigma in targets:
            noised = self._noise(latent, sigma, seed)
            sig = torch.tensor([sigma], dtype=torch.float32)
            write_latent_file(path, noised, caption, sig, backbone=self.backbone.value)
        lh, lw = latent.shape[-2:]
        ppl = get_preset(self.backbone).config.pixels_per_latent
        names = ", ".join(str(p) for p, _ in targets)
        sigmas = ", ".join(f"{s:g}" for _, s in targets)
        cap = f", caption [{', '.join(map(str, caption.shape))}]" if caption is not None else ""
        return (
            f"wrote {names} (latent {list(latent.shape)} from a {w}x{h} image{how}, degrade_sigma {sigmas}{cap}; "
            f"the {self.backbone.value} PiD decodes it to {lw * ppl}x{lh * ppl})"
        )


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file after the crop to multiples of 16, read from its
    header; an unreadable file raises the image loader's one-line error."""
    from PIL import Image

    from pid_trt.integrations.vae import CROP_MULTIPLE, load_image

    try:
        with Image.open(path) as img:
            w, h = img.size
    except (OSError, ValueError):
        load_image(path)  # raises its one-line error
        raise
    return w // CROP_MULTIPLE * CROP_MULTIPLE, h // CROP_MULTIPLE * CROP_MULTIPLE


def open_vae(backbone, vae, encoder, rae_stats, device):
    from pid_trt.integrations.ldm import ldm_spec
    from pid_trt.integrations.vae import add_noise, load_image, load_vae
    from pid_trt.integrations.vae import encode_image as run_encode

    spec = ldm_spec(backbone)
    for flag, value in (("--encoder", encoder), ("--rae-stats", rae_stats)):
        if value is not None:
            raise ConfigError(
                f"{flag} is for --backbone dinov2 / siglip; {spec.name} encodes with its VAE (--vae)"
            )
    if vae is None:
        raise ConfigError(f"--backbone {spec.name} encodes with the LDM's VAE: pass --vae DIR")
    quiet_hf_logs()
    model = load_vae(vae, spec.name, device=device)

    def clean(path):
        pixels = load_image(path)
        latent, _ = run_encode(model, pixels, spec.name)
        return latent, (pixels.shape[-1], pixels.shape[-2]), ""

    def noise(latent, sigma, seed):
        return add_noise(latent, sigma, spec.name, seed).float()

    return f"{type(model).__name__}", spec.backbone, image_size, clean, noise


def open_rae(backbone, encoder, rae_stats, vae, device):
    from pid_trt.integrations.rae_encoders import (
        check_image_size,
        check_stats,
        load_rae_encoder,
        rae_recipe,
        read_encoder_spec,
        read_rae_stats,
    )
    from pid_trt.integrations.vae import load_image, noise_latent

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
    # Everything cheap first (statistics, the folder's config), then the weights.
    stats = read_rae_stats(rae_stats) if rae_stats is not None else None
    spec = read_encoder_spec(encoder, recipe.backbone)
    check_stats(spec, stats)

    def check(path: Path) -> None:
        """An unreadable or too small image fails before the weights load."""
        w, h = image_size(path)
        check_image_size(spec, w, h, what=f"image {printable(path)}")

    state: dict = {}

    def clean(path):
        if "model" not in state:
            state["model"] = load_rae_encoder(encoder, recipe.backbone, stats=stats, device=device)
        pixels = load_image(path)
        latent = state["model"].encode(pixels, what=f"image {path}")
        return (
            latent,
            (pixels.shape[-1], pixels.shape[-2]),
            f" through the {recipe.title} encoder at {spec.input_size}x{spec.input_size}",
        )

    def noise(latent, sigma, seed):
        return noise_latent(latent, sigma, seed).float()

    return recipe.title, recipe.backbone, check, clean, noise
