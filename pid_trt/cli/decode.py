"""``pidtrt decode``: latent file in, image(s) out, on any backend."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from pid_trt.cli.errors import cli_errors, warn
from pid_trt.cli.flags import CaptionFile, RequestTimeout, Seed, SkipExisting
from pid_trt.cli.options import (
    TextDtype,
    TextEncoder,
    with_captions,
    with_net,
    with_runtime,
    with_tile_options,
)
from pid_trt.cli.outputs import Batch, Writers, with_output
from pid_trt.cli.panels import CAPTIONS_PANEL, IO_PANEL, RUNTIME_PANEL, SERVER_PANEL, SIZE_PANEL
from pid_trt.cli.ranks import RankConsole, Threads, finish_run, join_world
from pid_trt.cli.request import given_tiling
from pid_trt.errors import ConfigError
from pid_trt.io.encoders import OutputOptions
from pid_trt.jobs import decode_run, is_single
from pid_trt.jobs.decode import Decoded, DecodeSettings
from pid_trt.jobs.distributed import RankGroup, World, rank_runtime
from pid_trt.options import NetOptions, RuntimeOptions
from pid_trt.quoting import printable
from pid_trt.tiling.options import TileOptions

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
@with_tile_options
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
    caption: CaptionFile = None,
    text_encoder: TextEncoder = None,
    text_dtype: TextDtype = None,
    captions: dict = None,  # type: ignore[assignment] - a bundle (cli.options.with_*)
    skip_existing: SkipExisting = False,
    server: Server = None,
    concurrency: Concurrency = 4,
    timeout: RequestTimeout = 600.0,
    tiling: TileOptions = None,  # type: ignore[assignment] - a bundle (cli.options.with_tile_options)
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
    world = join_world(threads)
    if prompt and caption is not None:
        raise ConfigError("--prompt and --caption exclude each other: pass one")
    settings = DecodeSettings(tuple(prompt or ()), caption, size, noise, seed, steps, tiling, output=encoding)
    if server is not None:
        _refuse_local_options(net, runtime, settings, text_encoder, dry_run, compare_vae or vae is not None)
        if any(v is not None for v in (captions or {}).values()):
            raise ConfigError("--server decodes with the server's captions: drop --null-caption / --caption-store "
                              "(pass them to `pidtrt serve`)")  # fmt: skip
        params = given_tiling(settings.tiling, ctx)  # sent with each request: the server's for the rest
        _decode_remote(world, latent, output, server, settings, params, skip_existing, concurrency, timeout)
        return
    runtime = rank_runtime(world, runtime)
    if not dry_run:
        from pid_trt.integrations.vae_beside import vae_beside

        settings = dataclasses.replace(settings, beside=vae_beside(compare_vae, vae, net, runtime))
    load = decode_run.decoder_loader(net, runtime, text_encoder, text_dtype, not no_memory_check, captions)
    front = RankConsole(world)
    if dry_run:
        _print_plan(front, latent, net, settings, load)
    elif not is_single(latent) or skip_existing or world.distributed:
        summary, how = decode_run.decode_many(
            front, latent, output, settings, load, skip_existing=skip_existing, writers=writers, batch=batch
        )
        finish_run(world, summary, how)
    else:
        done, backend = decode_run.decode_one(latent[0], output, settings, load, writers, front)
        typer.echo(_one_file_line(done, steps, backend))


def _print_plan(
    front: RankConsole, latent: list[Path], net: NetOptions, settings: DecodeSettings, load
) -> None:
    """--dry-run: rank 0 prints the plan of each distinct size (no weights read), then warns
    of the arguments that named no input."""
    if front.world.is_main:
        text, problems = decode_run.dry_run(latent, net, settings, load)
        typer.echo(text)
        for problem in problems:
            warn(problem.message)


def _one_file_line(done: Decoded, steps: int, backend: str) -> str:
    """The line a one-file decode prints: what it wrote, how, and the VAE's drift when beside."""
    d = (done.beside or {}).get("colour_drift")
    drift = (
        f"; PiD vs VAE: chroma {d['mean_chroma_shift']:+.2f}, green-magenta {d['green_magenta_bias']:+.2f}, "
        f"delta E {d['mean_delta_e']:.2f} (CIELAB)" if d else ""
    )  # fmt: skip
    return (
        f"wrote {', '.join(map(printable, done.written))} ({done.width}x{done.height}, batch {done.batch}, "
        f"{steps} steps, {backend}, caption: {done.caption}{drift}) in {done.seconds:.2f} s"
    )


def _decode_remote(
    world: World, latent, output, server: str, settings: DecodeSettings, tiling: dict, skip_existing,
    concurrency, timeout,
):  # fmt: skip
    """--server: every input decoded by a running `pidtrt serve` (under torchrun, each rank
    sends its shard); ``tiling``: the request parameters of the tiling options given."""
    from pid_trt.cli.ranks import finish_run, gather_run, run_rank
    from pid_trt.serve.remote import RemoteFiles

    planned, problems = decode_run.decode_jobs(latent, output, settings)
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
    from pid_trt.cli.options import NET_PARAMS, given_flags

    given = given_flags(tuple(p for p in NET_PARAMS if p.name != "weights_seed"), dataclasses.asdict(net))
    default = DecodeSettings()
    given += [flag for flag, value, unset in (
        ("--noise", settings.noise_file, None), ("--size", settings.size, None),
        ("--precision", runtime.precision, None), ("--device", runtime.device, None),
        ("--text-encoder", text_encoder, None), ("--steps", settings.steps, default.steps),
        ("--backend", runtime.backend, "torch"), ("--dry-run", dry_run, False), ("--compare-vae", vae, False),
    ) if value != unset]  # fmt: skip
    given += ["--devices"] if settings.tiling.devices else []
    if given:
        why = " (the server places its own devices: pidtrt serve --gpus)" if "--devices" in given else ""
        raise ConfigError(
            f"--server decodes with the server's model and settings: drop {', '.join(given)}{why}"
        )
