"""``pidtrt decode`` over many latent files: inputs, output names, progress, summary.

Inputs: each argument is a latent file, a directory (its ``*.safetensors``, sorted, not
recursive) or a glob pattern (quoted, so that pidtrt expands it: ``'runs/**/*.safetensors'``
recurses). Outputs, one per input, named by ``-o``:

- a directory (existing, ending in ``/``, or without a suffix): ``DIR/<stem>.png``;
- a pattern with ``{stem}`` (the input's name without ``.safetensors``), ``{name}`` (its
  file name), ``{parent}`` (its folder's name) or ``{index}`` (its position, from 0), e.g.
  ``-o 'out/{parent}_{stem}.safetensors'``; the suffix picks the format as for one file.

Two inputs that would write the same output are refused before anything runs.
``--skip-existing`` skips an input whose output exists (for a PNG of a batched latent file,
its ``_0`` image), so an interrupted run resumes where it stopped. A file that fails is
reported by name and the others go on; the summary counts done, skipped and failed, and
the exit code is non-zero when any failed.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pid_trt.errors import BackendUnavailableError, ConfigError, PidTrtError, ResourceError

_PLACEHOLDERS = ("{stem}", "{name}", "{parent}", "{index}")
#: Retries of a request the server refused as overloaded (its queue was full), and the first wait.
OVERLOAD_RETRIES = 3
OVERLOAD_WAIT_S = 1.0


@dataclass(frozen=True)
class Job:
    """One input and the output it writes."""

    latent: Path
    output: Path


@dataclass
class Summary:
    """What a run did: outputs written, inputs skipped (output there), failures by input."""

    done: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # (input, one-line message, exit code)
    seconds: float = 0.0
    interrupted: bool = False
    planned: int = 0  # inputs the run set out to do

    @property
    def total(self) -> int:
        return max(self.planned, len(self.done) + len(self.skipped) + len(self.failed))

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return max((code for _, _, code in self.failed), default=0)


def is_single(args: list[Path]) -> bool:
    """One argument naming one file (or nothing yet): the single-file ``pidtrt decode``."""
    if len(args) != 1:
        return False
    text = os.fspath(args[0])
    return not Path(text).is_dir() and not (glob.has_magic(text) and not Path(text).exists())


def expand_inputs(args: list[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The latent files the arguments name, in order, each once; and (argument, problem)
    for arguments that name none (an empty directory, a pattern matching nothing). A
    missing plain file is kept: reading it reports it, by name, as a failed input."""
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for arg in args:
        text = os.fspath(arg)
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.glob("*.safetensors") if p.is_file())
            if not found:
                problems.append((text, f"directory {text} has no .safetensors file"))
        elif glob.has_magic(text) and not path.exists():
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                problems.append((text, f"no file matches {text!r}"))
        else:
            found = [path]
        files += found
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems


def plan_jobs(inputs: list[Path], output: Path, single: bool) -> list[Job]:
    """Pair each input with its output (see the module docstring); raises ConfigError for
    an ``-o`` that cannot name several outputs, or two inputs writing one output."""
    text = os.fspath(output)
    if single and not any(p in text for p in _PLACEHOLDERS) and not _is_dir_target(output):
        return [Job(inputs[0], output)]
    if any(p in text for p in _PLACEHOLDERS):

        def name(i: int, src: Path) -> Path:
            stem = src.name.removesuffix(".safetensors")
            try:
                return Path(text.format(stem=stem, name=src.name, parent=src.parent.name or ".", index=i))
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(
                    f"-o {text!r}: bad pattern ({exc}); use {', '.join(_PLACEHOLDERS)} (and {{{{ }}}} for braces)"
                ) from None
    elif _is_dir_target(output):

        def name(i: int, src: Path) -> Path:
            return output / f"{src.name.removesuffix('.safetensors')}.png"
    else:
        raise ConfigError(
            f"-o {text} names one file, but {len(inputs)} latent files are given: pass a directory (-o out/) "
            "or a pattern (-o 'out/{stem}.png')"
        )
    jobs = [Job(src, name(i, src)) for i, src in enumerate(inputs)]
    by_output: dict[Path, Job] = {}
    for job in jobs:
        key = job.output.resolve()
        if key in by_output:
            other = by_output[key]
            raise ConfigError(
                f"{other.latent} and {job.latent} would both write {job.output}: add {{parent}} or {{index}} "
                "to the -o pattern"
            )
        by_output[key] = job
    return jobs


def _is_dir_target(output: Path) -> bool:
    text = os.fspath(output)
    return output.is_dir() or text.endswith(("/", os.sep)) or not output.suffix


def output_exists(job: Job) -> bool:
    """The job's output is there (a PNG of a batched file counts by its ``_0`` image)."""
    out = job.output
    if out.exists():
        return True
    return out.suffix.lower() == ".png" and out.with_name(f"{out.stem}_0{out.suffix}").exists()


def exit_code_of(exc: BaseException) -> int:
    """The CLI's exit code for a failed input (2: fix the input; 3: the environment)."""
    from pid_trt.cli.errors import EXIT_ENV, EXIT_USAGE

    kind = getattr(exc, "kind", None)
    if kind is not None:
        return EXIT_USAGE if kind == "invalid" else EXIT_ENV
    if isinstance(exc, (BackendUnavailableError, ResourceError, OSError)):
        return EXIT_ENV
    return EXIT_USAGE if isinstance(exc, PidTrtError) else EXIT_ENV


def message_of(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        text = f"{exc.strerror or exc} ({exc.filename})"
    else:
        text = str(exc) or type(exc).__name__
    kind = getattr(exc, "kind", None)
    text = " ".join(text.split())
    return f"{text} ({kind})" if kind and kind != "invalid" else text


def run_jobs(
    jobs: list[Job],
    work: Callable[[Job], None],
    *,
    skip_existing: bool,
    concurrency: int = 1,
    problems: list[tuple[str, str]] | None = None,
) -> Summary:
    """Run ``work`` on each job (``concurrency`` at a time) under a progress bar on stderr;
    failures are printed as they happen, by input, and the run goes on."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pid_trt.cli.errors import EXIT_USAGE

    summary = Summary(planned=len(jobs) + len(problems or []))
    lock = threading.Lock()
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    for arg, problem in problems or []:
        summary.failed.append((arg, problem, EXIT_USAGE))
        console.print(f"error: {problem}", markup=False)
    todo = []
    for job in jobs:
        if skip_existing and output_exists(job):
            summary.skipped.append(job)
        else:
            todo.append(job)
    start = time.perf_counter()
    columns = (
        TextColumn("decode"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
        TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("decode", total=len(todo), failed=0)

        def one(job: Job) -> None:
            try:
                work(job)
            except Exception as exc:
                name = os.fspath(job.latent)
                message = message_of(exc)
                if name not in message:
                    message = f"{name}: {message}"
                with lock:
                    summary.failed.append((name, message, exit_code_of(exc)))
                    progress.update(task, failed=len(summary.failed))
                progress.console.print(f"error: {message}", markup=False)
            else:
                with lock:
                    summary.done.append(job)
            progress.advance(task)

        pool = None
        try:
            if concurrency <= 1:
                for job in todo:
                    one(job)
            else:
                pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="pidtrt-decode")
                for future in [pool.submit(one, job) for job in todo]:
                    future.result()
        except KeyboardInterrupt:  # stop: what is done stays done; rerun with --skip-existing to resume
            summary.interrupted = True
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    summary.seconds = time.perf_counter() - start
    return summary


def remote_work(url: str, timeout_s: float, seed: int, prompt: list[str], caption: Path | None):
    """``work`` for :func:`run_jobs` that sends each file to a ``pidtrt serve`` at ``url``
    (one client per thread; a request refused as overloaded is retried a few times)."""
    from pid_trt.serve.client import PidClient, ServeRequestError
    from pid_trt.serve.remote import request_file

    local = threading.local()
    clients: list[PidClient] = []
    clients_lock = threading.Lock()

    def work(job: Job) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = PidClient(url, timeout_s=timeout_s)
            with clients_lock:
                clients.append(client)
        job.output.parent.mkdir(parents=True, exist_ok=True)
        wait = OVERLOAD_WAIT_S
        for attempt in range(OVERLOAD_RETRIES + 1):
            try:
                request_file(client, job.latent, job.output, seed=seed, prompt=prompt, caption=caption)
                return
            except ServeRequestError as exc:
                if exc.kind != "overload" or attempt == OVERLOAD_RETRIES:
                    raise
            time.sleep(wait)
            wait *= 2

    def close() -> None:
        for client in clients:
            client.close()

    return work, close


def render_summary(summary: Summary, how: str) -> str:
    lines = [
        f"decoded {len(summary.done)}, skipped {len(summary.skipped)} (output exists), failed "
        f"{len(summary.failed)} of {summary.total} in {summary.seconds:.1f} s ({how})"
    ]
    if summary.interrupted:
        lines[0] = f"interrupted: {lines[0]}; rerun with --skip-existing to resume"
    lines += [f"failed: {message}" for _, message, _ in summary.failed]
    return "\n".join(lines)
