"""How a command over many inputs shows its run (:mod:`pid_trt.jobs`): a progress bar and
each failure as it happens on stderr (rank 0, or the one process), other ranks' failures,
then a summary line on stdout and the exit code (:mod:`pid_trt.cli.ranks` runs it)."""

from __future__ import annotations

import threading

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pid_trt.cli.errors import exit_code, one_line
from pid_trt.jobs import JobResult, Outcome, RunEvents, Summary
from pid_trt.quoting import printable


def failure_line(result: JobResult) -> str:
    """A failed input's one-line message, naming the input when the error does not."""
    message = one_line(result.error) if result.error is not None else "failed"
    name = printable(result.name)
    if result.job is not None and name not in message:
        message = f"{name}: {message}"
    return message


class ProgressBar(RunEvents):
    """A rich progress bar on stderr (``label``, done of pending, failures, time left);
    failures are printed above it as they happen."""

    def __init__(self, label: str) -> None:
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        columns = (
            TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
            TimeRemainingColumn(),
        )  # fmt: skip
        self.progress = Progress(*columns, console=self.console, transient=False)
        self.label = label
        self.task = None
        self.failed = 0
        self.lock = threading.Lock()

    def __enter__(self) -> ProgressBar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def started(self, pending: int) -> None:
        self.task = self.progress.add_task(self.label, total=pending, failed=self.failed)

    def finished(self, result: JobResult) -> None:
        if result.outcome is Outcome.FAILED:
            with self.lock:
                self.failed += 1
                if self.task is not None:
                    self.progress.update(self.task, failed=self.failed)
            self.progress.console.print(f"error: {failure_line(result)}", markup=False)
        if self.task is not None and result.outcome is not Outcome.SKIPPED:
            self.progress.advance(self.task)


class RankErrors(RunEvents):
    """A ``torchrun`` rank other than 0: its failures on stderr as they happen, nothing else."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def finished(self, result: JobResult) -> None:
        if result.outcome is Outcome.FAILED:
            typer.echo(f"error: rank {self.rank}: {failure_line(result)}", err=True)


def render_summary(summary: Summary, how: str, verb: str = "decoded") -> str:
    """``decoded N, skipped N (output exists), failed N of N in S s (how)``, then one
    ``failed:`` line per failed input."""
    lines = [
        f"{verb} {len(summary.done)}, skipped {len(summary.skipped)} (output exists), failed "
        f"{len(summary.failed)} of {summary.total} in {summary.seconds:.1f} s ({how})"
    ]
    if summary.interrupted:
        lines[0] = f"interrupted: {lines[0]}; rerun with --skip-existing to resume"
    lines += [f"failed: {failure_line(r)}" for r in summary.failed]
    return "\n".join(lines)


def summary_exit_code(summary: Summary) -> int:
    """130 for an interrupted run, else the highest exit code of a failed input (0: none failed)."""
    if summary.interrupted:
        return 130
    return max((exit_code(r.error) for r in summary.failed if r.error is not None), default=0)
