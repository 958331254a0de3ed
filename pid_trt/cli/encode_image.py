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
from typing import Annotated

import typer

from pid_trt import jobs as batch
from pid_trt.cli.errors import cli_errors
from pid_trt.cli.flags import SkipExisting
from pid_trt.cli.options import TextDtype
from pid_trt.cli.ranks import Threads, join_world
from pid_trt.config import Backbone as PresetName
from pid_trt.errors import ConfigError, InputFileError
from pid_trt.quoting import printable

ImagesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Images, folders (their images) or quoted glob patterns (centre-cropped to multiples of 16)."
    ),
]
Vae = Annotated[
    Path | None,
    typer.Option(
        "--vae",
        help="Local diffusers VAE folder, or a pipeline folder with a vae/ subfolder (the diffusers LDMs).",
    ),
]
_RAE = (PresetName.DINOV2, PresetName.SIGLIP)
_STANDINS = (PresetName.TINY, PresetName.SMALL)
Backbone = Annotated[
    str,
    typer.Option(
        "--backbone",
        help=f"{', '.join(b.value for b in PresetName if b not in (*_RAE, *_STANDINS))} (the VAE's LDM), "
        f"or {' / '.join(b.value for b in _RAE)} (a representation encoder, --encoder).",
    ),
]
Output = Annotated[
    Path,
    typer.Option(
        "-o",
        "--output",
        help="Latent file (.safetensors); for several images a folder or a pattern ({stem}, {name}, "
        "{parent}, {index}).",
    ),
]
Encoder = Annotated[
    Path | None,
    typer.Option(
        "--encoder",
        help="dinov2 / siglip: local transformers folder of DINOv2-B with registers or SigLIP-2 So400M/14-224.",
    ),
]
RaeStats = Annotated[
    Path | None,
    typer.Option(
        "--rae-stats",
        help="dinov2: RAE latent statistics (upstream's stat.pt, or safetensors with mean and var).",
    ),
]
Manifest = Annotated[
    list[Path] | None,
    typer.Option(
        "--manifest",
        help='JSON-lines file, one {"image": PATH, "prompt": TEXT} a line (repeatable); after the arguments.',
    ),
]
DegradeSigma = Annotated[
    list[str] | None,
    typer.Option(
        "--degrade-sigma",
        help="Noise level(s) in [0, 1] (0: clean), stored with each latent; repeat it or give a list "
        "(0,0.2,0.4): one latent per sigma, named <name>_sigma<σ>.safetensors when several.",
    ),
]
Seed = Annotated[
    int, typer.Option("--seed", help="Seed of that noise (image i of a run uses seed + i, as upstream).")
]
Prompt = Annotated[
    str | None,
    typer.Option("--prompt", help="Caption of the images without a manifest prompt (with --text-encoder)."),
]
TextEncoder = Annotated[
    Path | None,
    typer.Option(
        "--text-encoder",
        help="Local Gemma-2-2B-it directory: store each image's caption embedding with its latents.",
    ),
]
Device = Annotated[str, typer.Option("--device", help="cpu or cuda, for the VAE or encoder.")]


@cli_errors
def encode_image(
    images: ImagesArg = None,
    vae: Vae = None,
    encoder: Encoder = None,
    rae_stats: RaeStats = None,
    manifest: Manifest = None,
    degrade_sigma: DegradeSigma = None,
    seed: Seed = 0,
    prompt: Prompt = None,
    text_encoder: TextEncoder = None,
    text_dtype: TextDtype = None,
    skip_existing: SkipExisting = False,
    device: Device = "cpu",
    threads: Threads = None,
    *,
    backbone: Backbone,
    output: Output,
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
    planned = batch.assign_outputs(
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
                raise ConfigError(
                    f"{printable(seen[key])} and {printable(job.name)} would both write {printable(path)}: "
                    "add {index} to -o"
                )
            seen[key] = job.name
