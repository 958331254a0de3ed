"""``pidtrt decode``: latent file in, image(s) out, on any backend."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from pid_trt.cli.errors import cli_errors, warn
from pid_trt.cli.options import TextDtype, TextEncoder, with_captions, with_net, with_runtime, with_tiling
from pid_trt.cli.outputs import Batch, Writers, with_output
from pid_trt.cli.panels import CAPTIONS_PANEL, IO_PANEL, MANY_PANEL, RUNTIME_PANEL, SERVER_PANEL, SIZE_PANEL
from pid_trt.cli.ranks import Threads, join_world
from pid_trt.cli.request import given_tiling
from pid_trt.errors import ConfigError, InputFileError
from pid_trt.io.encoders import OutputOptions
from pid_trt.io.writer import ImageWriter
from pid_trt.jobs.decode import DecodeSettings, decode_exists, decode_file
from pid_trt.jobs.distributed import RankGroup, World, rank_runtime
from pid_trt.options import NetOptions, RuntimeOptions
from pid_trt.quoting import printable

RANDOM_WEIGHTS_WARNING = "--random-weights: the network is randomly initialised; the {} mean{} nothing"


LatentArg = Annotated[
    list[Path],
    typer.Argument(
        help="Latent file (safetensors: latent, caption_embedding, degrade_sigma); or several, directories "
        "(their *.safetensors) or quoted glob patterns ('runs/**/*.safetensors')."
    ),
]
Output = Annotated[
    Path,
    typer.Option(
        "-o",
        "--output",
        help="out.png (out_0.png ... for B > 1), .jpg, .webp or .safetensors; many inputs: out/ or 'out/{stem}.png'.",
        rich_help_panel=IO_PANEL,
    ),
]
Noise = Annotated[
    Path | None,
    typer.Option(
        "--noise", help="Noise file [S, B, 3, H, W] for reproducible decodes.", rich_help_panel=IO_PANEL
    ),
]
Seed = Annotated[
    int,
    typer.Option(
        "--seed", help="Seed of the sampler's noise (ignored with --noise).", rich_help_panel=IO_PANEL
    ),
]
Steps = Annotated[
    int,
    typer.Option(
        "--steps",
        min=1,
        help="Sampling steps (4 = the released distilled sampler).",
        rich_help_panel=RUNTIME_PANEL,
    ),
]
Size = Annotated[
    str | None,
    typer.Option(
        "--size",
        help="Output WxH when not the latent's size x its scale (e.g. 3840x2160 from a 68x120 latent).",
        rich_help_panel=SIZE_PANEL,
    ),
]
NoMemoryCheck = Annotated[
    bool,
    typer.Option(
        "--no-memory-check",
        help="Skip the up-front check that the decode fits the device memory.",
        rich_help_panel=RUNTIME_PANEL,
    ),
]
Prompt = Annotated[
    list[str] | None,
    typer.Option(
        "--prompt",
        help="Caption text (one, or one per batch row), encoded with --text-encoder.",
        rich_help_panel=CAPTIONS_PANEL,
    ),
]
Caption = Annotated[
    Path | None,
    typer.Option(
        "--caption",
        help="Caption file from `pidtrt encode-caption` (caption_embedding [N, T, D]).",
        rich_help_panel=CAPTIONS_PANEL,
    ),
]
SkipExisting = Annotated[
    bool,
    typer.Option(
        "--skip-existing",
        help="Skip inputs whose output exists (resume an interrupted run).",
        rich_help_panel=MANY_PANEL,
    ),
]
Server = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="Decode on a running `pidtrt serve` at this URL (http://HOST:PORT) instead.",
        rich_help_panel=SERVER_PANEL,
    ),
]
Concurrency = Annotated[
    int,
    typer.Option(
        "--concurrency", min=1, help="Requests in flight at once with --server.", rich_help_panel=SERVER_PANEL
    ),
]
Timeout = Annotated[
    float,
    typer.Option("--timeout", help="Seconds one --server request may take.", rich_help_panel=SERVER_PANEL),
]
DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print the plan (one shot or tiles, engines, cost) and exit; reads no weights.",
        rich_help_panel=IO_PANEL,
    ),
]
CompareVae = Annotated[
    bool,
    typer.Option(
        "--compare-vae",
        help="Also decode with the LDM's own VAE (--vae): <out>_vae.png, <out>_compare.png and .json (drift).",
        rich_help_panel=IO_PANEL,
    ),
]
Vae = Annotated[
    Path | None,
    typer.Option(
        "--vae",
        help="The LDM's diffusers VAE folder (or a pipeline folder with vae/) for --compare-vae.",
        rich_help_panel=IO_PANEL,
    ),
]


@cli_errors
@with_net
@with_runtime
@with_tiling
@with_captions
@with_output
def decode(
    ctx: typer.Context,
    net: NetOptions = None,  # type: ignore[assignment] - a bundle (cli.options.with_*)
    noise: Noise = None,
    seed: Seed = 0,
    steps: Steps = 4,
    runtime: RuntimeOptions = None,  # type: ignore[assignment] - a bundle (cli.options.with_*)
    size: Size = None,
    no_memory_check: NoMemoryCheck = False,
    prompt: Prompt = None,
    caption: Caption = None,
    text_encoder: TextEncoder = None,
    text_dtype: TextDtype = None,
    captions: dict = None,  # type: ignore[assignment] - a bundle (cli.options.with_*)
    skip_existing: SkipExisting = False,
    server: Server = None,
    concurrency: Concurrency = 4,
    timeout: Timeout = 600.0,
    tiling: dict = None,  # type: ignore[assignment] - a bundle (cli.options.with_*)
    dry_run: DryRun = False,
    threads: Threads = None,
    compare_vae: CompareVae = False,
    vae: Vae = None,
    encoding: OutputOptions = None,  # type: ignore[assignment] - a bundle (cli.outputs.with_output)
    writers: Writers = None,
    batch: Batch = 1,
    *,
    latent: LatentArg,
    output: Output,
) -> None:
    """Decode latent file(s) into image(s): one file, or many (directories, globs) with a progress bar.
    Under torchrun each process decodes its share of the files on its own GPU (README, 'Batch jobs')."""
    from pid_trt.jobs import is_single

    world = join_world(threads)
    if prompt and caption is not None:
        raise ConfigError("--prompt and --caption exclude each other: pass one")
    settings = DecodeSettings(tuple(prompt or ()), caption, size, noise, seed, steps, tiling, output=encoding)
    if server is not None:
        _refuse_local_options(net, runtime, settings, text_encoder, dry_run, compare_vae or vae is not None)
        if any(v is not None for v in (captions or {}).values()):
            raise ConfigError("--server decodes with the server's captions: drop --null-caption / --caption-store "
                              "(pass them to `pidtrt serve`)")  # fmt: skip
        tiling = given_tiling(settings.tiling, ctx)  # sent with each request: the server's for the rest
        _decode_remote(world, latent, output, server, settings, tiling, skip_existing, concurrency, timeout)
        return
    runtime = rank_runtime(world, runtime)
    if not dry_run:
        from pid_trt.integrations.vae_beside import vae_beside

        settings = dataclasses.replace(settings, beside=vae_beside(compare_vae, vae, net, runtime))
    loaded = _loader(net, runtime, text_encoder, text_dtype, no_memory_check, captions)
    if dry_run:
        if world.is_main:
            _dry_run(latent, net, settings, loaded)
    elif not is_single(latent) or skip_existing or world.distributed:
        _decode_many(world, latent, output, settings, skip_existing, loaded, writers, batch)
    else:
        with loaded() as decoder, ImageWriter(writers) as writer:
            random = decoder.spec.random_weights
            done = decode_file(
                decoder, latent[0], output, settings,
                on_start=(lambda: warn(RANDOM_WEIGHTS_WARNING.format("image", "s"))) if random else None,
                writer=writer,
            ).finished()  # fmt: skip
        d = (done.beside or {}).get("colour_drift")
        drift = (
            f"; PiD vs VAE: chroma {d['mean_chroma_shift']:+.2f}, green-magenta {d['green_magenta_bias']:+.2f}, "
            f"delta E {d['mean_delta_e']:.2f} (CIELAB)" if d else ""
        )  # fmt: skip
        typer.echo(
            f"wrote {', '.join(map(printable, done.written))} ({done.width}x{done.height}, batch {done.batch}, "
            f"{steps} steps, {decoder.backend_name}, caption: {done.caption}{drift}) in {done.seconds:.2f} s"
        )


def _loader(
    net: NetOptions, runtime: RuntimeOptions, text_encoder, text_dtype, no_memory_check: bool, captions
):
    """A function that loads the Decoder (options checked first, weights on first need);
    ``captions``: the caption keywords (--null-caption, --caption-store ...)."""
    from pid_trt.decoder import Decoder

    def load() -> Decoder:
        return Decoder.from_options(
            net, runtime, text_encoder=text_encoder, text_dtype=text_dtype, memory_check=not no_memory_check,
            memory_hint="pass --no-memory-check to try anyway", **(captions or {}),
        )  # fmt: skip

    return load


def _dry_run(latent: list[Path], net: NetOptions, settings: DecodeSettings, load) -> None:
    """--dry-run: the plan of each distinct (batch, size) among the inputs; no weights read."""
    from pid_trt import jobs
    from pid_trt.io import read_latent_file

    inputs, problems = jobs.expand_inputs(latent)
    if not inputs:
        raise InputFileError("; ".join(p.message for p in problems) or "no latent file to plan for")
    with load() as decoder:
        seen: dict[tuple[int, int, int], list[Path]] = {}
        for path in inputs:
            lat = read_latent_file(path, decoder.config)
            height, width = decoder.output_size(lat.latent_hw, settings.size)
            seen.setdefault((lat.batch, height, width), []).append(path)
        args = _net_args(net, decoder.spec)
        for i, ((rows, height, width), paths) in enumerate(seen.items()):
            plan = decoder.plan(height, width, rows, settings.steps, **settings.tiling)
            if len(inputs) > 1:
                more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
                typer.echo(("\n" if i else "") + f"{printable(paths[0])}{more}:")
            typer.echo(plan.render(decoder.spec.name, args))
    for problem in problems:
        warn(problem.message)


def _net_args(net: NetOptions, spec) -> str:
    """The model options of a ``pidtrt build`` command for the same net."""
    args = []
    if spec.preset is not None and net.backbone is not None:
        args += ["--backbone", spec.preset.backbone.value]
        if spec.preset.released:
            args += ["--ckpt-type", spec.preset.ckpt_type.value]
    elif net.net_config is not None:
        args += ["--net-config", str(net.net_config)]
    if net.checkpoint is not None:
        args += ["--checkpoint", str(net.checkpoint)]
    elif net.random_weights:
        args += ["--random-weights"] + (["--weights-seed", str(net.weights_seed)] if net.weights_seed else [])
    return " ".join(args)


def _plan(latent: list[Path], output: Path, settings: DecodeSettings):
    """(jobs, problems) of a many-file run: one output per input."""
    from pid_trt import jobs

    inputs, problems = jobs.expand_inputs(latent)
    if not inputs and problems:
        raise InputFileError("; ".join(p.message for p in problems))
    single = jobs.is_single(latent)
    planned = jobs.plan_jobs(inputs, output, single=single)
    if settings.noise_file is not None and len(planned) > 1:
        raise ConfigError("--noise is one decode's noise: it takes one latent file, not several")
    if not single:
        jobs.make_parents(planned)
    return planned, problems


def _decode_many(
    world: World,
    latent,
    output,
    settings: DecodeSettings,
    skip_existing: bool,
    load,
    writers: int | None,
    batch: int = 1,
) -> None:
    """Several inputs (or --skip-existing, or torchrun): one output per input, a progress bar,
    failures reported by input, a summary; exit code non-zero when any failed. Under torchrun
    every rank plans the same jobs and decodes its shard (:mod:`pid_trt.cli.ranks`); each
    rank's images are encoded and written by its own ``writers`` threads while it decodes on."""
    from pid_trt.cli.ranks import finish_run, gather_run, run_rank
    from pid_trt.io.writer import default_writers

    planned, problems = _plan(latent, output, settings)
    if writers is None:
        writers = default_writers(world.local_world_size if world.distributed else 1)
    with RankGroup(world) as group:
        with load() as decoder, ImageWriter(writers) as writer:
            if decoder.spec.random_weights and world.is_main:
                warn(RANDOM_WEIGHTS_WARNING.format("images", ""))
            sources: dict[str, None] = {}
            work, flush = _worker(decoder, settings, writer, batch, sources)
            summary = run_rank(
                world, "decode", planned, work, flush=flush,
                skip_existing=skip_existing, problems=problems, exists=decode_exists(settings),
            )  # fmt: skip
        summary, how = gather_run(group, summary), decoder.backend_name
        if set(sources) - {"file"}:  # say it where a caption did not come with the files
            how += f", caption: {' / '.join(sources)}"
        if settings.beside is not None and world.is_main:
            from pid_trt.integrations.vae_beside import write_run_manifest

            path, _ = write_run_manifest(settings.beside, planned, summary.results, decoder, summary.seconds)
            how += f"; VAE beside PiD, manifest {path}"
        finish_run(world, summary, how)


def _worker(decoder, settings: DecodeSettings, writer: ImageWriter, batch: int, sources: dict[str, None]):
    """(work, flush) of a many-file run: one file per decode, or ``--batch`` files at once;
    ``sources`` collects the captions' sources (the run's summary names them)."""
    if batch == 1:

        def work(job):
            done = decode_file(decoder, job.source, job.output, settings, writer=writer)
            sources[done.caption] = None
            return done.pending

        return work, None
    from pid_trt.jobs.batching import BatchedDecode

    worker = BatchedDecode(decoder, settings, writer, batch, sources)
    return worker, worker.flush


def _decode_remote(
    world: World, latent, output, server: str, settings: DecodeSettings, tiling: dict, skip_existing,
    concurrency, timeout,
):  # fmt: skip
    """--server: every input decoded by a running `pidtrt serve` (under torchrun, each rank
    sends its shard); ``tiling``: the request parameters of the tiling options given."""
    from pid_trt.cli.ranks import finish_run, gather_run, run_rank
    from pid_trt.serve.remote import RemoteFiles

    planned, problems = _plan(latent, output, settings)
    with RankGroup(world) as group:
        with RemoteFiles(
            server, timeout_s=timeout, seed=settings.seed, prompt=list(settings.prompt),
            caption=settings.caption_file, tiling=tiling, options=settings.output,
        ) as work:  # fmt: skip
            summary = run_rank(
                world, "decode", planned, work, concurrency=concurrency, skip_existing=skip_existing,
                problems=problems,
            )  # fmt: skip
        finish_run(world, gather_run(group, summary), f"server {server}")


def _refuse_local_options(
    net, runtime, settings: DecodeSettings, text_encoder, dry_run: bool, vae: bool
) -> None:
    """--server decodes with the server's model and settings: refuse the options that pick local
    ones. The tiling options but --devices go with the requests (the server places its own devices)."""
    from pid_trt.cli.options import NET_PARAMS, TILING_PARAMS, given_flags

    given = given_flags(NET_PARAMS[:5], dataclasses.asdict(net))
    default = DecodeSettings()
    given += [flag for flag, value, unset in (
        ("--noise", settings.noise_file, None), ("--size", settings.size, None),
        ("--precision", runtime.precision, None), ("--device", runtime.device, None),
        ("--text-encoder", text_encoder, None), ("--steps", settings.steps, default.steps),
        ("--backend", runtime.backend, "torch"), ("--dry-run", dry_run, False), ("--compare-vae", vae, False),
    ) if value != unset]  # fmt: skip
    given += given_flags(tuple(p for p in TILING_PARAMS if p.name == "devices"), settings.tiling)
    if given:
        why = " (the server places its own devices: pidtrt serve --devices)" if "--devices" in given else ""
        raise ConfigError(
            f"--server decodes with the server's model and settings: drop {', '.join(given)}{why}"
        )
