"""What a run of jobs did: one result per input, in the order they finished."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from pid_trt.jobs.outputs import Job


class Outcome(enum.Enum):
    """How one input ended."""

    DONE = "done"  #: its output was written
    SKIPPED = "skipped"  #: its output existed already (resume)
    FAILED = "failed"  #: the worker raised; the others went on


@dataclass(frozen=True)
class JobResult:
    """One input's outcome. ``name``: the input as given (a job's :attr:`Job.name`, or an
    argument that named no input); ``job``: None for such an argument; ``error``: the
    exception of a failed input (the front end picks its message and exit code);
    ``seconds``: the worker's wall time (0 for skipped inputs)."""

    name: str
    outcome: Outcome
    job: Job | None = None
    error: BaseException | None = None
    seconds: float = 0.0


@dataclass
class Summary:
    """A run's results. ``planned``: the inputs it set out to do (jobs plus arguments that
    named none), so an interrupted run still reports its total; ``seconds``: wall time of
    the jobs it ran; ``interrupted``: stopped early (Ctrl-C, or a cancel request), the
    jobs not started have no result."""

    results: list[JobResult] = field(default_factory=list)
    planned: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    def of(self, outcome: Outcome) -> list[JobResult]:
        return [r for r in self.results if r.outcome is outcome]

    @property
    def done(self) -> list[JobResult]:
        return self.of(Outcome.DONE)

    @property
    def skipped(self) -> list[JobResult]:
        return self.of(Outcome.SKIPPED)

    @property
    def failed(self) -> list[JobResult]:
        return self.of(Outcome.FAILED)

    @property
    def total(self) -> int:
        return max(self.planned, len(self.results))
