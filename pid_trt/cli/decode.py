"""``pidtrt decode``: latent file in, image(s) out, on any backend."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from pid_trt.cli.errors import cli_errors, warn
from pid_trt.cli.options import (
    Backbone,
    BackendName,
    Checkpoint,
    CkptType,
    CudaGraph,
    Device,
    EngineDir,
    ExportDir,
    NetConfigFile,
    NoHoist,
    PrecisionName,
    RandomWeights,
    TextDtype,
    TextEncoder,
    WeightsSeed,
    net_options,
    runtime_options,
)
from pid_trt.errors import ConfigError, InputFileError
from pid_trt.io.caption import caption_for_latent


@cli_errors
def decode(
    latent: list[Path] = typer.Argument(
        ...,
        help="Latent file (safetensors: latent, caption_embedding, degrade_sigma); or several, directories "
        "(their *.safetensors) or quoted glob patterns ('runs/**/*.safetensors').",
    ),
    output: Path = typer.Option(
        ...,
        "-o",
        "--output",
        help="out.png (out_0.png, out_1.png ... for B > 1) or out.safetensors; for several inputs a directory "
        "(out/: out/<stem>.png) or a pattern with {stem}, {name}, {parent}, {index} ('out/{stem}.safetensors').",
    ),
    backbone: Backbone = None,
    ckpt_type: CkptType = None,
    checkpoint: Checkpoint = None,
    net_config: NetConfigFile = None,
    random_weights: RandomWeights = False,
    weights_seed: WeightsSeed = 0,
    noise: Path | None = typer.Option(
        None, "--noise", help="Noise file [S, B, 3, H, W] for reproducible decodes."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampler's noise (ignored with --noise)."),
    steps: int = typer.Option(
        4, "--steps", min=1, help="Sampling steps (4 = the released distilled sampler)."
    ),
    backend: BackendName = "torch",
    device: Device = None,
    dtype: PrecisionName = None,
    engine_dir: EngineDir = Path("engines"),
    export_dir: ExportDir = Path("export"),
    size: str | None = typer.Option(
        None,
        "--size",
        help="Output WxH when it is not latent x down factor x sr scale (e.g. 3840x2160 from a 68x120 latent).",
    ),
    no_hoist: NoHoist = False,
    no_memory_check: bool = typer.Option(
        False, "--no-memory-check", help="Skip the up-front check that the decode fits the device memory."
    ),
    cuda_graph: CudaGraph = False,
    prompt: list[str] = typer.Option(
        [], "--prompt", help="Caption text (one, or one per batch row), encoded with --text-encoder."
    ),
    caption: Path | None = typer.Option(
        None, "--caption", help="Caption file from `pidtrt encode-caption` (caption_embedding [N, T, D])."
    ),
    text_encoder: TextEncoder = None,
    text_dtype: TextDtype = None,
    skip_existing: bool = typer.Option(
        False, "--skip-existing", help="Skip inputs whose output exists (resume an interrupted run)."
    ),
    server: str | None = typer.Option(
        None, "--server", help="Decode on a running `pidtrt serve` at this URL (http://HOST:PORT) instead."
    ),
    concurrency: int = typer.Option(
        4, "--concurrency", min=1, help="Requests in flight at once with --server."
    ),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds one --server request may take."),
    tiles: str = typer.Option(
        "auto",
        "--tiles",
        help="auto: one shot inside the checkpoint type's trained sizes, tiles of a trained size outside them or "
        "where one shot would not fit the memory; off: one shot; COLSxROWS: that grid of tiles.",
    ),
    tile_size: str | None = typer.Option(
        None, "--tile-size", help="Tile WIDTHxHEIGHT in pixels, on the latent grid (default: a trained size)."
    ),
    tile_overlap: int | None = typer.Option(
        None,
        "--tile-overlap",
        help="Least overlap of neighbouring tiles in pixels (default: 1/8 of the tile).",
    ),
    tile_batch: int = typer.Option(1, "--tile-batch", help="Tiles per backend call (one engine batch)."),
    allow_untrained_size: bool = typer.Option(
        False,
        "--allow-untrained-size",
        help="Decode in one shot outside the trained sizes (colours may drift).",
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the plan (one shot or tiles, engines, cost) and exit; reads no weights.",
    ),
) -> None:
    """Decode latent file(s) into image(s): one file, or many (directories, globs) with a progress bar."""
    from pid_trt.jobs import is_single

    if prompt and caption is not None:
        raise ConfigError("--prompt and --caption exclude each other: pass one")
    if dry_run and server is None:
        _dry_run(**locals())
        return
    if not is_single(latent) or skip_existing or server is not None:
        _decode_many(**locals())
        return
    latent = latent[0]
    decoder = _load(**locals())
    with decoder:
        written, width, height, batch, elapsed = _decode_file(
            decoder,
            latent,
            output,
            prompt=prompt,
            caption=caption,
            size=size,
            noise=noise,
            seed=seed,
            steps=steps,
            tiling=_tiling(**locals()),
        )
    names = ", ".join(str(p) for p in written)
    typer.echo(
        f"wrote {names} ({width}x{height}, batch {batch}, {steps} steps, {decoder.backend_name}) in {elapsed:.2f} s"
    )


def _load(
    backbone, ckpt_type, checkpoint, net_config, random_weights, weights_seed, backend, dtype, device, engine_dir,
    export_dir, no_hoist, cuda_graph, text_encoder, text_dtype, no_memory_check, **_,
):  # fmt: skip
    from pid_trt.decoder import Decoder

    return Decoder.from_options(
        net_options(backbone, ckpt_type, checkpoint, net_config, random_weights, weights_seed),
        runtime_options(backend, dtype, device, engine_dir, export_dir, no_hoist, cuda_graph),
        text_encoder=text_encoder, text_dtype=text_dtype, memory_check=not no_memory_check,
        memory_hint="pass --no-memory-check to try anyway",
    )  # fmt: skip


def _tiling(tiles, tile_size, tile_overlap, tile_batch, allow_untrained_size, **_) -> dict:
    """The tiling keywords of Decoder.decode / Decoder.plan, as the user gave them."""
    return {
        "tiles": tiles, "tile_size": tile_size, "tile_overlap": tile_overlap, "tile_batch": tile_batch,
        "allow_untrained_size": allow_untrained_size,
    }  # fmt: skip


def _net_args(backbone, ckpt_type, checkpoint, net_config, random_weights, weights_seed, spec) -> str:
    """The model options of a ``pidtrt build`` command for the same net."""
    args = []
    if spec.preset is not None and backbone is not None:
        args += ["--backbone", spec.preset.backbone.value]
        if spec.preset.released:
            args += ["--ckpt-type", spec.preset.ckpt_type.value]
    elif net_config is not None:
        args += ["--net-config", str(net_config)]
    if checkpoint is not None:
        args += ["--checkpoint", str(checkpoint)]
    elif random_weights:
        args += ["--random-weights"] + (["--weights-seed", str(weights_seed)] if weights_seed else [])
    return " ".join(args)


def _dry_run(**opts) -> None:
    """--dry-run: the plan of each distinct (batch, size) among the inputs; no weights read."""
    from pid_trt import jobs as batch
    from pid_trt.io import read_latent_file

    inputs, problems = batch.expand_inputs(opts["latent"])
    if not inputs:
        raise InputFileError("; ".join(p.message for p in problems) or "no latent file to plan for")
    decoder = _load(**opts)
    with decoder:
        seen: dict[tuple[int, int, int], list[Path]] = {}
        for path in inputs:
            lat = read_latent_file(path, decoder.config)
            height, width = decoder.output_size(lat.latent_hw, opts["size"])
            seen.setdefault((lat.batch, height, width), []).append(path)
        args = _net_args(
            opts["backbone"], opts["ckpt_type"], opts["checkpoint"], opts["net_config"], opts["random_weights"],
            opts["weights_seed"], decoder.spec,
        )  # fmt: skip
        for i, ((rows, height, width), paths) in enumerate(seen.items()):
            plan = decoder.plan(height, width, rows, opts["steps"], **_tiling(**opts))
            if len(inputs) > 1:
                more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
                typer.echo(("\n" if i else "") + f"{paths[0]}{more}:")
            typer.echo(plan.render(decoder.spec.name, args))
    for problem in problems:
        warn(problem.message)


def _decode_file(
    decoder, latent, output, *, prompt, caption, size, noise, seed, steps, warn_random=True, tiling=None
):
    """Decode one latent file with a loaded Decoder and write its output(s); returns
    (written paths, width, height, batch, seconds). ``tiling``: Decoder.decode's tiling keywords."""
    from pid_trt.io import read_latent_file, read_noise_file, write_images

    spec, config = decoder.spec, decoder.config
    lat = read_latent_file(latent, config)
    caption_emb = caption_for_latent(lat, latent, config, prompt=bool(prompt), caption_file=caption)
    if not prompt and caption_emb is None and (spec.released_preset or not spec.random_weights):
        raise InputFileError(
            f"latent file {latent} has no caption_embedding: pass --prompt TEXT (with --text-encoder DIR), "
            f"--caption FILE (from `pidtrt encode-caption`), or add tensor `caption_embedding` "
            f"[B, {config.txt_max_length}, {config.txt_embed_dim}] (see README, 'Caption embeddings')"
        )
    height, width = decoder.output_size(lat.latent_hw, size)
    if spec.random_weights and warn_random:
        warn("--random-weights: the network is randomly initialised; the image means nothing")
    draws = read_noise_file(noise, steps, lat.batch, height, width) if noise is not None else None
    tiling = tiling or {}
    start = time.perf_counter()
    image = decoder.decode(
        lat.latent, caption_emb, prompt=(prompt if len(prompt) > 1 else prompt[0]) if prompt else None,
        degrade_sigma=lat.degrade_sigma, seed=seed, noise=draws, size=(height, width), steps=steps, **tiling,
    )  # fmt: skip
    written = write_images(image, output)
    elapsed = time.perf_counter() - start
    return written, width, height, lat.batch, elapsed


def _decode_many(**opts) -> None:
    """Several inputs (or --skip-existing, or --server): one output per input (pid_trt.jobs), a
    progress bar, failures reported by input, a summary; exit code non-zero when any failed."""
    from pid_trt import jobs as batch
    from pid_trt.cli.progress import finish, run_with_progress

    inputs, problems = batch.expand_inputs(opts["latent"])
    if not inputs and problems:
        raise InputFileError("; ".join(p.message for p in problems))
    single = batch.is_single(opts["latent"])
    jobs = batch.plan_jobs(inputs, opts["output"], single=single)
    if opts["noise"] is not None and len(jobs) > 1:
        raise ConfigError("--noise is one decode's noise: it takes one latent file, not several")
    if not single:
        batch.make_parents(jobs)
    run = {"skip_existing": opts["skip_existing"], "problems": problems}
    if opts["server"] is not None:
        from pid_trt.serve.remote import RemoteFiles

        _refuse_local_options(opts)
        with RemoteFiles(
            opts["server"],
            timeout_s=opts["timeout"],
            seed=opts["seed"],
            prompt=opts["prompt"],
            caption=opts["caption"],
        ) as work:
            summary = run_with_progress("decode", jobs, work, concurrency=opts["concurrency"], **run)
        finish(summary, f"server {opts['server']}")
        return
    decoder = _load(**opts)
    with decoder:
        if decoder.spec.random_weights:
            warn("--random-weights: the network is randomly initialised; the images mean nothing")

        def work(job) -> None:
            _decode_file(
                decoder, job.source, job.output, prompt=opts["prompt"], caption=opts["caption"],
                size=opts["size"], noise=opts["noise"], seed=opts["seed"], steps=opts["steps"], warn_random=False,
                tiling=_tiling(**opts),
            )  # fmt: skip

        summary = run_with_progress("decode", jobs, work, **run)
    finish(summary, decoder.backend_name)


def _refuse_local_options(opts: dict) -> None:
    """--server decodes with the server's model and settings: refuse the options that pick local ones."""
    local_only = {
        "--backbone": opts["backbone"], "--ckpt-type": opts["ckpt_type"], "--checkpoint": opts["checkpoint"],
        "--net-config": opts["net_config"], "--random-weights": opts["random_weights"] or None,
        "--noise": opts["noise"], "--size": opts["size"], "--dtype": opts["dtype"], "--device": opts["device"],
        "--text-encoder": opts["text_encoder"], "--steps": None if opts["steps"] == 4 else opts["steps"],
        "--backend": None if opts["backend"] == "torch" else opts["backend"],
        "--tiles": None if opts["tiles"] == "auto" else opts["tiles"], "--tile-size": opts["tile_size"],
        "--tile-overlap": opts["tile_overlap"], "--tile-batch": None if opts["tile_batch"] == 1 else opts["tile_batch"],
        "--allow-untrained-size": opts["allow_untrained_size"] or None, "--dry-run": opts["dry_run"] or None,
    }  # fmt: skip
    given = [name for name, value in local_only.items() if value is not None]
    if given:
        raise ConfigError(f"--server decodes with the server's model and settings: drop {', '.join(given)}")
