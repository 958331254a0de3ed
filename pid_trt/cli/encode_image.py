"""``pidtrt encode-image``: image(s) -> the LDM's diffusers VAE, or the dinov2 / siglip
representation encoder -> PiD latent file(s), optionally noised at several sigmas and with
each image's caption embedding.

One image, one sigma, ``-o FILE``: one latent file. Otherwise (several images, folders, globs,
``--manifest`` JSON lines, several ``--degrade-sigma``, ``--skip-existing``) a run over the
images (:mod:`pid_trt.jobs`): the model is loaded once, each image is encoded once and written
once per sigma, a progress bar, failures reported by image, a summary.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pid_trt import jobs as batch
from pid_trt.cli.errors import cli_errors
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
    from functools import partial

    from pid_trt.integrations.encode_images import ImageSource, image_size, parse_sigmas
    from pid_trt.jobs.distributed import bind_cuda_device, rank_device
    from pid_trt.jobs.manifest import ImageSample

    world = join_world(threads)
    if world.distributed:
        device = rank_device(world, device)
        bind_cuda_device(device)
    sigmas = parse_sigmas(degrade_sigma)
    args, manifests = list(images or []), list(manifest or [])
    _check_arguments(args, manifests, output, prompt, text_encoder)
    open_source = partial(
        ImageSource.open, backbone, vae, encoder, rae_stats, text_encoder, text_dtype, device
    )
    if _one_file(args, manifests, output, sigmas, skip_existing, world.distributed):
        image_size(Path(args[0]))  # a missing or unreadable image fails before any model loads
        typer.echo(open_source().write(ImageSample(Path(args[0]), prompt), [(output, sigmas[0])], seed))
        return
    _encode_many(world, open_source, args, manifests, prompt, output, sigmas, seed, skip_existing)


def _check_arguments(args, manifests, output: Path, prompt, text_encoder) -> None:
    if not args and not manifests:
        raise ConfigError("no images: give image files, folders or patterns, or --manifest FILE")
    if output.suffix != ".safetensors" and not batch.is_dir_target(output):
        raise ConfigError(f"-o {output}: expected a .safetensors latent file, a folder or a pattern")
    if prompt is not None and text_encoder is None:
        raise ConfigError("--prompt is stored as a caption embedding: it needs --text-encoder DIR")


def _one_file(args, manifests, output: Path, sigmas, skip_existing: bool, distributed: bool) -> bool:
    """One image, one sigma, -o FILE, nothing to resume, one process: no job run."""
    if manifests or not batch.is_single(args) or len(sigmas) != 1 or skip_existing or distributed:
        return False
    return not batch.is_dir_target(output) and not any(p in str(output) for p in batch.PLACEHOLDERS)


def _encode_many(world, open_source, args, manifests, prompt, output, sigmas, seed, skip_existing) -> None:
    """Every image a job (this rank's shard under torchrun), one file per sigma, a summary."""
    from pid_trt.cli.ranks import finish_run, gather_run, run_rank
    from pid_trt.integrations.encode_images import IMAGE_STRIP, sigma_outputs
    from pid_trt.jobs.distributed import RankGroup
    from pid_trt.jobs.manifest import image_samples

    samples, problems = image_samples(args, manifests, prompt)
    if not samples and problems:
        raise InputFileError("; ".join(p.message for p in problems))
    single = not manifests and batch.is_single(args)
    planned = batch.plan_jobs(
        [s.image for s in samples], output, single=single, strip=IMAGE_STRIP, default_suffix=".safetensors",
        what="images",
    )  # fmt: skip
    # One job per image writing one file per sigma; the job's output is the last one written,
    # so an existing output means a finished image (each file is written atomically).
    targets = {job.index: sigma_outputs(job.output, sigmas) for job in planned}
    jobs = [batch.Job(job.source, targets[job.index][-1][0], job.index) for job in planned]
    _refuse_shared_outputs(jobs, targets)
    if not single:
        batch.make_parents(jobs)
    with RankGroup(world) as group:
        source = open_source()

        def work(job) -> None:
            source.write(samples[job.index], targets[job.index], seed + job.index)

        summary = run_rank(world, "encode", jobs, work, skip_existing=skip_existing, problems=problems)
        n = len(sigmas)
        how = f"{source.name}, {n} sigma{'s' * (n != 1)} an image"
        finish_run(world, gather_run(group, summary), how, verb="encoded")


def _refuse_shared_outputs(jobs, targets) -> None:
    seen: dict[Path, str] = {}
    for job in jobs:
        for path, _ in targets[job.index]:
            key = path.resolve()
            if key in seen:
                raise ConfigError(f"{seen[key]} and {job.name} would both write {path}: add {{index}} to -o")
            seen[key] = job.name
