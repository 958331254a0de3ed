"""A command over many inputs as one rank of a ``torchrun`` run (:mod:`pid_trt.jobs.distributed`).

One process (no ``RANK`` / ``WORLD_SIZE``, or a world size of 1): every job under a progress
bar, a summary, the exit code of the worst failure. Several: each rank runs its shard of the planned jobs;
rank 0 draws the progress bar of its own shard and prints the one summary of the whole run;
the other ranks print only their own failures (``error: rank R: ...``). Every rank exits
with the whole run's code: non-zero on every rank when an input failed on any rank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Annotated, Any

import typer

from pid_trt.cli.errors import exit_code, one_line, warn
from pid_trt.cli.panels import RUNTIME_PANEL
from pid_trt.cli.progress import ProgressBar, RankErrors, render_summary, summary_exit_code
from pid_trt.jobs import Job, JobResult, Problem, Summary, output_exists, run_jobs, shard
from pid_trt.jobs.distributed import (
    RankGroup,
    World,
    rank_threads,
    run_exit_code,
    set_threads,
    world_from_env,
)

#: ``--threads`` help, shared by the commands that run as ranks.
THREADS_HELP = (
    "torch threads, ONNX Runtime too (default: torch's; under torchrun the node's cores shared by its ranks)."
)
#: ``--threads``, for the commands that run as ranks.
Threads = Annotated[
    int | None, typer.Option("--threads", min=1, help=THREADS_HELP, rich_help_panel=RUNTIME_PANEL)
]


def join_world(threads: int | None) -> World:
    """This process's world (torchrun's variables; one-line error for inconsistent ones),
    with its CPU threads set (:func:`pid_trt.jobs.distributed.rank_threads`). Call it first,
    before anything is read or written."""
    world = world_from_env()
    set_threads(rank_threads(world, threads))
    return world


def run_rank(
    world: World,
    label: str,
    jobs: Sequence[Job],
    work: Callable[[Job], Future | None],
    *,
    skip_existing: bool,
    concurrency: int = 1,
    problems: Sequence[Problem] = (),
    exists: Callable[[Job], bool] = output_exists,
    flush: Callable[[], None] | None = None,
) -> Summary:
    """This rank's part of the run: every job (one process), or its :func:`~pid_trt.jobs.shard`
    of ``jobs`` (the same planned list on every rank). ``problems`` (arguments that named no
    input) count once, on rank 0; ``exists``: the resume test, ``flush``: a batching worker's
    last call (:func:`pid_trt.jobs.run_jobs`)."""
    options = dict(skip_existing=skip_existing, concurrency=concurrency, exists=exists, flush=flush)
    if not world.distributed:
        mine, label_ = list(jobs), label
    else:
        mine, label_ = shard(jobs, world.rank, world.world_size), f"{label} (rank 0 of {world.world_size})"
        if not world.is_main:
            return run_jobs(mine, work, events=RankErrors(world.rank), **options)
    with ProgressBar(label_) as bar:
        return run_jobs(mine, work, problems=problems, events=bar, **options)


class RankConsole:
    """The CLI as a run's front end (:class:`pid_trt.jobs.frontend.FrontEnd`): this rank's
    jobs under a progress bar (:func:`run_rank`), failures worded by :func:`describe`,
    warnings on stderr."""

    def __init__(self, world: World) -> None:
        self.world = world

    def run(
        self, label: str, jobs: Sequence[Job], work: Callable[[Job], Future | None], **options: Any
    ) -> Summary:
        return run_rank(self.world, label, jobs, work, **options)

    def describe(self, result: JobResult) -> tuple[str, int]:
        return describe(result)

    def warn(self, message: str) -> None:
        warn(message)


def describe(result: JobResult) -> tuple[str, int]:
    """A failed input's one-line message and exit code, as this rank's front end words them."""
    error = result.error
    return (one_line(error), exit_code(error)) if error is not None else ("failed", 1)


def gather_run(group: RankGroup, summary: Summary) -> Summary:
    """The whole run's summary, on every rank (one process: its ``summary`` as it is)."""
    return group.gather(summary, describe)


def finish_run(world: World, summary: Summary, how: str, verb: str = "decoded") -> None:
    """Report a run (its :func:`gather_run` summary) and exit with its code: the summary
    printed by rank 0 (with several, ``how`` gains ``N ranks``), every rank exiting with the
    whole run's code."""
    if world.is_main:
        ranks = f", {world.world_size} ranks" if world.distributed else ""
        typer.echo(render_summary(summary, how + ranks, verb))
    code = run_exit_code(summary) if world.distributed else summary_exit_code(summary)
    if code:
        raise typer.Exit(code)
