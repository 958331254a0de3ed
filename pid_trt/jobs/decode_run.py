"""``pidtrt decode``'s runs over latent files with a local :class:`pid_trt.Decoder`: one file,
many files (a progress display, a summary; under torchrun each rank its share) and the
``--dry-run`` plan. The front end (:class:`~pid_trt.jobs.frontend.FrontEnd`) shows progress
and warnings and picks the exit code; nothing here prints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pid_trt.errors import ConfigError, InputFileError
from pid_trt.jobs.decode import Decoded, DecodeSettings, decode_exists, decode_file
from pid_trt.jobs.distributed import RankGroup
from pid_trt.jobs.frontend import FrontEnd
from pid_trt.jobs.inputs import Problem, expand_inputs, is_single
from pid_trt.jobs.outputs import Job, assign_outputs, make_parents
from pid_trt.jobs.summary import Summary
from pid_trt.quoting import printable

if TYPE_CHECKING:
    from pid_trt.decoder import Decoder
    from pid_trt.io.writer import ImageWriter
    from pid_trt.netspec import NetSpec
    from pid_trt.options import NetOptions, RuntimeOptions

#: The warning of a decode with ``--random-weights`` ("image", "s" / "images", "").
RANDOM_WEIGHTS_WARNING = "--random-weights: the network is randomly initialised; the {} mean{} nothing"

#: A function that loads the run's Decoder (a context manager; weights read on first need).
Loader = Callable[[], AbstractContextManager["Decoder"]]


def decoder_loader(
    net: NetOptions, runtime: RuntimeOptions, text_encoder: Path | None = None, text_dtype: str | None = None,
    memory_check: bool = True, captions: dict[str, Any] | None = None,
) -> Loader:  # fmt: skip
    """A function that loads the Decoder of a decode (options checked first, weights on first
    need); ``captions``: :meth:`pid_trt.Decoder.load`'s caption keywords (null caption, store)."""

    def load() -> Decoder:
        from pid_trt.decoder import Decoder

        return Decoder.from_options(
            net, runtime, text_encoder=text_encoder, text_dtype=text_dtype, memory_check=memory_check,
            memory_hint="pass --no-memory-check to try anyway", **(captions or {}),
        )  # fmt: skip

    return load


def decode_jobs(
    latent: Sequence[Path], output: Path, settings: DecodeSettings
) -> tuple[list[Job], list[Problem]]:
    """(jobs, problems) of a run over the latent files ``latent`` names: one output per input
    (``-o`` a file, a folder or a pattern: :func:`pid_trt.jobs.assign_outputs`), the output folders made."""
    inputs, problems = expand_inputs(list(latent))
    if not inputs and problems:
        raise InputFileError("; ".join(p.message for p in problems))
    single = is_single(list(latent))
    planned = assign_outputs(inputs, output, single=single)
    if settings.noise_file is not None and len(planned) > 1:
        raise ConfigError("--noise is one decode's noise: it takes one latent file, not several")
    if not single:
        make_parents(planned)
    return planned, problems


def decode_one(
    latent: Path, output: Path, settings: DecodeSettings, load: Loader, writers: int | None, front: FrontEnd
) -> tuple[Decoded, str]:
    """One latent file into ``output``: (what was written, the backend's name)."""
    from pid_trt.io.writer import ImageWriter

    with load() as decoder, ImageWriter(writers) as writer:
        warn = RANDOM_WEIGHTS_WARNING.format("image", "s")
        done = decode_file(
            decoder, latent, output, settings, writer=writer,
            on_start=(lambda: front.warn(warn)) if decoder.spec.random_weights else None,
        ).finished()  # fmt: skip
        return done, decoder.backend_name


def decode_many(
    front: FrontEnd, latent: Sequence[Path], output: Path, settings: DecodeSettings, load: Loader, *,
    skip_existing: bool = False, writers: int | None = None, batch: int = 1,
) -> tuple[Summary, str]:  # fmt: skip
    """Several inputs (or ``--skip-existing``, or torchrun): one output per input, failures kept
    by input; returns the whole run's summary (every rank's, on every rank) and how it ran (the
    backend, the captions' sources, the VAE manifest). Under torchrun every rank plans the same
    jobs and decodes its shard; each rank's images are encoded and written by its own
    ``writers`` threads while it decodes on."""
    from pid_trt.io.writer import ImageWriter, default_writers

    world = front.world
    planned, problems = decode_jobs(latent, output, settings)
    if writers is None:
        writers = default_writers(world.local_world_size if world.distributed else 1)
    with RankGroup(world) as group:
        with load() as decoder, ImageWriter(writers) as writer:
            if decoder.spec.random_weights and world.is_main:
                front.warn(RANDOM_WEIGHTS_WARNING.format("images", ""))
            sources: dict[str, None] = {}
            work, flush = file_worker(decoder, settings, writer, batch, sources)
            summary = front.run(
                "decode", planned, work, flush=flush, skip_existing=skip_existing, problems=problems,
                exists=decode_exists(settings),
            )  # fmt: skip
        summary, how = group.gather(summary, front.describe), decoder.backend_name
        if set(sources) - {"file"}:  # say it where a caption did not come with the files
            how += f", caption: {' / '.join(sources)}"
        if settings.beside is not None and world.is_main:
            from pid_trt.integrations.vae_beside import VaeBeside, write_run_manifest

            assert isinstance(settings.beside, VaeBeside)  # the one kind of decode beside PiD
            path, _ = write_run_manifest(settings.beside, planned, summary.results, decoder, summary.seconds)
            how += f"; VAE beside PiD, manifest {path}"
    return summary, how


def file_worker(
    decoder: Decoder, settings: DecodeSettings, writer: ImageWriter, batch: int, sources: dict[str, None]
) -> tuple[Callable[[Job], Future | None], Callable[[], None] | None]:
    """(work, flush) of a many-file run: one file per decode, or ``batch`` files at once;
    ``sources`` collects the captions' sources (the run's summary names them)."""
    if batch == 1:

        def work(job: Job) -> Future | None:
            done = decode_file(decoder, Path(job.source), job.output, settings, writer=writer)
            sources[done.caption] = None
            return done.pending

        return work, None
    from pid_trt.jobs.batching import BatchedDecode

    worker = BatchedDecode(decoder, settings, writer, batch, sources)
    return worker, worker.flush


def dry_run(
    latent: Sequence[Path], net: NetOptions, settings: DecodeSettings, load: Loader
) -> tuple[str, list[Problem]]:
    """``--dry-run``: the plan of each distinct (batch, size) among the inputs, as text
    (:meth:`pid_trt.tiling.SizePlan.render`), and the arguments that named no input; reads
    no weights."""
    from pid_trt.io import read_latent_file

    inputs, problems = expand_inputs(list(latent))
    if not inputs:
        raise InputFileError("; ".join(p.message for p in problems) or "no latent file to plan for")
    blocks = []
    with load() as decoder:
        seen: dict[tuple[int, int, int], list[Path]] = {}
        for path in inputs:
            lat = read_latent_file(path, decoder.config)
            height, width = decoder.output_size(lat.latent_hw, settings.size)
            seen.setdefault((lat.batch, height, width), []).append(path)
        args = build_flags(net, decoder.spec)
        for (rows, height, width), paths in seen.items():
            size_plan = decoder.plan(height, width, rows, settings.steps, tiling=settings.tiling)
            head = ""
            if len(inputs) > 1:
                more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
                head = f"{printable(paths[0])}{more}:\n"
            blocks.append(head + size_plan.render(decoder.spec.name, args))
    return "\n\n".join(blocks), problems


def build_flags(net: NetOptions, spec: NetSpec) -> str:
    """The model options of a ``pidtrt build`` command for the same net (a plan's engines)."""
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
