"""``pidtrt encode-image``: image(s) -> the LDM's diffusers VAE, or the dinov2 / siglip
representation encoder -> PiD latent file(s), optionally noised at several sigmas and with
each image's caption embedding.

One image, one sigma, ``-o FILE``: one latent file. Otherwise (several images, folders, globs,
``--manifest`` JSON lines, several ``--degrade-sigma``, ``--skip-existing``) a run over the
images (:mod:`pid_trt.jobs`): the model is loaded once, each image is encoded once and written
once per sigma, a progress bar, failures reported by image, a summary.
"""

from __future__ import annotations

import math
from pathlib import Path

import typer

from pid_trt.cli.errors import cli_errors
from pid_trt.cli.generate import quiet_hf_logs
from pid_trt.cli.ranks import THREADS_HELP, join_world
from pid_trt.errors import ConfigError, InputFileError


@cli_errors
def encode_image(
    images: list[str] | None = typer.Argument(
        None,
        help="Images, folders (their images) or quoted glob patterns (centre-cropped to multiples of 16).",
    ),
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
    output: Path = typer.Option(
        ...,
        "-o",
        "--output",
        help="Latent file (.safetensors); for several images a folder or a pattern ({stem}, {name}, "
        "{parent}, {index}).",
    ),
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
    manifest: list[Path] | None = typer.Option(
        None,
        "--manifest",
        help='JSON-lines file, one {"image": PATH, "prompt": TEXT} a line (repeatable); after the arguments.',
    ),
    degrade_sigma: list[str] | None = typer.Option(
        None,
        "--degrade-sigma",
        help="Noise level(s) in [0, 1] (0: clean), stored with each latent; repeat it or give a list "
        "(0,0.2,0.4): one latent per sigma, named <name>_sigma<σ>.safetensors when several.",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of that noise (image i of a run uses seed + i, as upstream)."
    ),
    prompt: str | None = typer.Option(
        None, "--prompt", help="Caption of the images without a manifest prompt (with --text-encoder)."
    ),
    text_encoder: Path | None = typer.Option(
        None,
        "--text-encoder",
        help="Local Gemma-2-2B-it directory: store each image's caption embedding with its latents.",
    ),
    text_dtype: str | None = typer.Option(
        None,
        "--text-dtype",
        help="Caption encoder precision: fp32 or bf16 (default: bf16 on cuda, fp32 on cpu).",
    ),
    skip_existing: bool = typer.Option(
        False, "--skip-existing", help="Skip images whose latents exist (resume an interrupted run)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda, for the VAE or encoder."),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
) -> None:
    """Encode images into PiD latent files (latent, degrade_sigma; caption with --text-encoder).
    Under torchrun each process encodes its share of the images on its own GPU (README, 'Batch jobs')."""
    from pid_trt import jobs as batch
    from pid_trt.jobs.distributed import RankGroup, bind_cuda_device, rank_device
    from pid_trt.jobs.manifest import ImageSample, image_samples

    world = join_world(threads)
    if world.distributed:
        device = rank_device(world, device)
        bind_cuda_device(device)
    sigmas = parse_sigmas(degrade_sigma)
    args = list(images or [])
    manifests = list(manifest or [])
    if not args and not manifests:
        raise ConfigError("no images: give image files, folders or patterns, or --manifest FILE")
    if output.suffix != ".safetensors" and not batch.is_dir_target(output):
        raise ConfigError(f"-o {output}: expected a .safetensors latent file, a folder or a pattern")
    if prompt is not None and text_encoder is None:
        raise ConfigError("--prompt is stored as a caption embedding: it needs --text-encoder DIR")
    one_file = (
        not manifests
        and batch.is_single(args)
        and len(sigmas) == 1
        and not skip_existing
        and not world.distributed
    )
    if one_file and not batch.is_dir_target(output) and not any(p in str(output) for p in batch.PLACEHOLDERS):
        image_size(Path(args[0]))  # a missing or unreadable image fails before any model loads
        source = _Source.open(backbone, vae, encoder, rae_stats, text_encoder, text_dtype, device)
        written = source.write(ImageSample(Path(args[0]), prompt), [(output, sigmas[0])], seed)
        typer.echo(written)
        return
    samples, problems = image_samples(args, manifests, prompt)
    if not samples and problems:
        raise InputFileError("; ".join(p.message for p in problems))
    single = not manifests and batch.is_single(args)
    planned = batch.plan_jobs(
        [s.image for s in samples], output, single=single, strip=_IMAGE_STRIP, default_suffix=".safetensors",
        what="images",
    )  # fmt: skip
    # One job per image writing one file per sigma; the job's output is the last one written,
    # so an existing output means a finished image (each file is written atomically).
    targets = {job.index: sigma_outputs(job.output, sigmas) for job in planned}
    jobs = [batch.Job(job.source, targets[job.index][-1][0], job.index) for job in planned]
    _refuse_shared_outputs(jobs, targets)
    if not single:
        batch.make_parents(jobs)
    from pid_trt.cli.ranks import finish_run, gather_run, run_rank

    with RankGroup(world) as group:
        source = _Source.open(backbone, vae, encoder, rae_stats, text_encoder, text_dtype, device)

        def work(job) -> None:
            source.write(samples[job.index], targets[job.index], seed + job.index)

        summary = run_rank(world, "encode", jobs, work, skip_existing=skip_existing, problems=problems)
        n = len(sigmas)
        finish_run(
            world,
            gather_run(group, summary),
            f"{source.name}, {n} sigma{'s' * (n != 1)} an image",
            verb="encoded",
        )


#: Suffixes ``{stem}`` drops from an image's name.
_IMAGE_STRIP = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".PNG", ".JPG", ".JPEG")


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


def _refuse_shared_outputs(jobs, targets) -> None:
    seen: dict[Path, str] = {}
    for job in jobs:
        for path, _ in targets[job.index]:
            key = path.resolve()
            if key in seen:
                raise ConfigError(f"{seen[key]} and {job.name} would both write {path}: add {{index}} to -o")
            seen[key] = job.name


class _Source:
    """The loaded encoder (a diffusers VAE or a representation encoder) and the optional
    caption encoder: :meth:`write` encodes one image once and writes a latent per sigma."""

    def __init__(self, name, backbone, check, clean, noise, captions) -> None:
        self.name, self.backbone = name, backbone
        self.check, self._clean, self._noise, self._captions = check, clean, noise, captions

    @classmethod
    def open(cls, backbone, vae, encoder, rae_stats, text_encoder, text_dtype, device) -> _Source:
        from pid_trt.integrations.rae_encoders import is_rae_backbone

        if is_rae_backbone(backbone):
            parts = _open_rae(backbone, encoder, rae_stats, vae, device)
        else:
            parts = _open_vae(backbone, vae, encoder, rae_stats, device)
        captions = None
        if text_encoder is not None:
            from pid_trt.text import CaptionEncoder, resolve_text_encoder_source

            captions = CaptionEncoder.load(
                resolve_text_encoder_source(text_encoder), device=device, dtype=text_dtype
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
                    f"image {sample.image}: no prompt for its caption (give --prompt or a manifest prompt)"
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


def _open_vae(backbone, vae, encoder, rae_stats, device):
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


def _open_rae(backbone, encoder, rae_stats, vae, device):
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
        check_image_size(spec, w, h, what=f"image {path}")

    state: dict = {}

    def clean(path):
        if "model" not in state:
            state["model"] = load_rae_encoder(encoder, recipe.backbone, stats=stats, device=device)
        pixels = load_image(path)
        latent = state["model"].encode(pixels)
        return (
            latent,
            (pixels.shape[-1], pixels.shape[-2]),
            f" through the {recipe.title} encoder at {spec.input_size}x{spec.input_size}",
        )

    def noise(latent, sigma, seed):
        return noise_latent(latent, sigma, seed).float()

    return recipe.title, recipe.backbone, check, clean, noise
