"""Run a worker over jobs: some at once, each failure kept and the others going on, a stop
on Ctrl-C or on request, a result per input.

The worker is any ``work(job) -> None`` that writes ``job.output`` (atomically, see
:mod:`pid_trt.atomic`) or raises; the runner knows nothing of what it decodes, encodes or
generates. Progress goes to a :class:`RunEvents` the front end supplies (the CLI draws a
progress bar with it); the runner itself prints nothing and picks no exit code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all

from pid_trt.errors import ConfigError, InputFileError
from pid_trt.jobs.inputs import Problem
from pid_trt.jobs.outputs import Job, output_exists, split_existing
from pid_trt.jobs.readahead import upcoming
from pid_trt.jobs.stale import remove_stale_outputs
from pid_trt.jobs.summary import JobResult, Outcome, Summary


class RunEvents:
    """What :func:`run_jobs` reports as it goes; these do nothing, a front end overrides them.
    :meth:`finished` may be called from several worker threads at once."""

    def started(self, pending: int) -> None:
        """The run starts ``pending`` jobs (after skipping existing outputs)."""

    def finished(self, result: JobResult) -> None:
        """One input ended: an argument that named none (first, before :meth:`started`), a
        skipped job, or a job the worker finished or failed."""


def run_jobs(
    jobs: Sequence[Job],
    work: Callable[[Job], Future | None],
    *,
    skip_existing: bool = False,
    concurrency: int = 1,
    problems: Sequence[Problem] = (),
    events: RunEvents | None = None,
    cancel: threading.Event | None = None,
    exists: Callable[[Job], bool] = output_exists,
    flush: Callable[[], None] | None = None,
) -> Summary:
    """Run ``work`` on each job, ``concurrency`` at a time (threads; 1: in order, in this
    thread), and return what happened. A worker that raises fails its job alone; one that
    returns a ``Future`` is recorded when it resolves (:class:`_Landing`); ``flush``: called
    once no job is left (a batching worker). ``skip_existing``: skip jobs whose output
    ``exists`` (resume). ``problems``: arguments that named no input, failed inputs.
    Ctrl-C or ``cancel`` stops the run: running jobs finish, jobs not started are dropped,
    the summary says ``interrupted``. First, the temp files a killed run left for these
    jobs' outputs are removed (only those whose writer is gone: :mod:`pid_trt.jobs.stale`).
    """
    if concurrency < 1:
        raise ConfigError(f"concurrency {concurrency}: expected at least 1 job at a time")
    events = events or RunEvents()
    summary = Summary(planned=len(jobs) + len(problems))
    lock = threading.Lock()
    dropped = threading.Event()  # a job was not started because of ``cancel``

    def record(result: JobResult) -> None:
        with lock:
            summary.results.append(result)
        events.finished(result)

    for problem in problems:
        record(JobResult(problem.arg, Outcome.FAILED, error=InputFileError(problem.message)))
    remove_stale_outputs(jobs, time.time())  # a killed run's leftovers: only dead writers' temp files
    todo, existing = split_existing(jobs, exists) if skip_existing else (list(jobs), [])
    for job in existing:
        record(JobResult(job.name, Outcome.SKIPPED, job))
    events.started(len(todo))

    def settle(job: Job, begin: float, exc: BaseException | None) -> None:
        outcome = Outcome.DONE if exc is None else Outcome.FAILED
        record(JobResult(job.name, outcome, job, exc, time.perf_counter() - begin))

    landing = _Landing(settle)

    def one(job: Job) -> None:
        if cancel is not None and cancel.is_set():
            dropped.set()
            return
        begin = time.perf_counter()
        try:
            out = work(job)
        except Exception as exc:
            settle(job, begin, exc)
        else:
            landing.track(job, begin, out) if isinstance(out, Future) else settle(job, begin, None)

    start, pool = time.perf_counter(), None
    try:
        if concurrency == 1:  # in order: a decode worker's latent files are read ahead
            with upcoming([job.source for job in todo]):
                for job in todo:
                    one(job)
        else:
            pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="pidtrt-job")
            for future in [pool.submit(one, job) for job in todo]:
                future.result()
    except KeyboardInterrupt:  # stop: what is done stays done; a rerun that skips existing outputs resumes
        summary.interrupted = True
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if flush is not None:  # jobs held back (a batch being gathered): decoded and written now
            flush()
        landing.wait()  # outputs still being written land (or fail) before the summary
    summary.interrupted = summary.interrupted or dropped.is_set()
    summary.seconds = time.perf_counter() - start
    return summary


class _Landing:
    """Jobs whose worker returned a ``Future`` (its output still being written, e.g. by
    :class:`pid_trt.io.writer.ImageWriter`): each recorded by ``settle(job, begin, error)``
    when the future resolves; :meth:`wait` returns once every one is recorded."""

    def __init__(self, settle: Callable[[Job, float, BaseException | None], None]) -> None:
        self._settle = settle
        self._recorded: list[Future] = []
        self._lock = threading.Lock()

    def track(self, job: Job, begin: float, out: Future) -> None:
        recorded: Future = Future()  # set once the result is recorded, not merely known
        with self._lock:
            self._recorded.append(recorded)

        def land(f: Future) -> None:
            self._settle(job, begin, f.exception())
            recorded.set_result(None)

        out.add_done_callback(land)

    def wait(self) -> None:
        with self._lock:
            recorded = list(self._recorded)
        wait_all(recorded)
