"""What a front end lends a run over many inputs (:class:`FrontEnd`): the run's ranks, the
display of this rank's jobs as they run, the wording of a failure and its exit code, and its
warnings. The runs of :mod:`pid_trt.jobs.decode_run` and :mod:`pid_trt.jobs.generate` take
one and print nothing themselves; the CLI's is :class:`pid_trt.cli.ranks.RankConsole`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Protocol

from pid_trt.jobs.distributed import World
from pid_trt.jobs.inputs import Problem
from pid_trt.jobs.outputs import Job
from pid_trt.jobs.summary import JobResult, Summary


class FrontEnd(Protocol):
    """A run's front end. ``world``: this process's rank of the run (one process: a world of 1)."""

    world: World

    def run(
        self,
        label: str,
        jobs: Sequence[Job],
        work: Callable[[Job], Future | None],
        *,
        skip_existing: bool,
        problems: Sequence[Problem] = (),
        exists: Callable[[Job], bool] = ...,
        flush: Callable[[], None] | None = None,
    ) -> Summary:
        """This rank's share of ``jobs`` run by :func:`pid_trt.jobs.run_jobs`, shown as the front
        end shows progress (``label``: what the run does, e.g. "decode")."""

    def describe(self, result: JobResult) -> tuple[str, int]:
        """A failed input's one-line message and exit code, as this front end words them."""

    def warn(self, message: str) -> None:
        """Show a warning (one line)."""
