"""Running a real worker (text file in, PNG out) over jobs: failures, resuming, concurrency,
cancelling, sharding among processes."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pid_trt.atomic import TEMP_PREFIX
from pid_trt.errors import ConfigError, InputFileError
from pid_trt.jobs import (
    Job,
    JobResult,
    Outcome,
    Problem,
    RunEvents,
    assign_outputs,
    expand_inputs,
    make_parents,
    run_jobs,
    shard,
)
from tests.jobs.helpers import BYTES, colour_png, png_values, write_input


def _plan(tmp_path: Path, words: dict[str, list[str]]) -> list[Job]:
    for stem, row_words in words.items():
        write_input(tmp_path / "in" / f"{stem}.safetensors", *row_words)
    files, problems = expand_inputs([tmp_path / "in"])
    assert problems == []
    jobs = assign_outputs(files, tmp_path / "out", single=False)
    make_parents(jobs)
    return jobs


class Recorder(RunEvents):
    def __init__(self) -> None:
        self.pending: list[int] = []
        self.results: list[JobResult] = []
        self.lock = threading.Lock()

    def started(self, pending: int) -> None:
        self.pending.append(pending)

    def finished(self, result: JobResult) -> None:
        with self.lock:
            self.results.append(result)


def test_failing_input_is_reported_and_the_others_are_written(tmp_path: Path) -> None:
    jobs = _plan(tmp_path, {"a": ["black"], "b": ["purple"], "c": ["white", "black"]})
    events = Recorder()
    summary = run_jobs(jobs, colour_png, events=events)
    assert [r.name for r in summary.done] == [
        str(tmp_path / "in/a.safetensors"),
        str(tmp_path / "in/c.safetensors"),
    ]
    (failed,) = summary.failed
    assert failed.name == str(tmp_path / "in/b.safetensors") and failed.job is jobs[1]
    assert failed.outcome is Outcome.FAILED and all(r.outcome is Outcome.DONE for r in summary.done)
    assert isinstance(failed.error, InputFileError) and "purple" in str(failed.error)
    assert summary.total == 3 and not summary.interrupted and summary.skipped == []
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "a.png",
        "c_0.png",
        "c_1.png",
    ]  # nothing of b, no temp file
    assert png_values(out / "a.png") == {BYTES["black"]}
    assert png_values(out / "c_0.png") == {BYTES["white"]} and png_values(out / "c_1.png") == {BYTES["black"]}
    assert events.pending == [3] and events.results == summary.results


def test_skip_existing_resumes_without_touching_finished_outputs(tmp_path: Path) -> None:
    jobs = _plan(tmp_path, {"a": ["black"], "b": ["white", "white"], "c": ["white"]})
    calls: list[Job] = []

    def work(job: Job) -> None:
        calls.append(job)
        colour_png(job)

    (tmp_path / "out" / "a.png").write_bytes(b"finished earlier")
    (tmp_path / "out" / "b_0.png").write_bytes(b"finished earlier")
    events = Recorder()
    summary = run_jobs(jobs, work, skip_existing=True, events=events)
    assert calls == [jobs[2]]
    assert [r.job for r in summary.skipped] == jobs[:2] and [r.job for r in summary.done] == [jobs[2]]
    assert (tmp_path / "out" / "a.png").read_bytes() == b"finished earlier"
    assert events.pending == [1] and summary.total == 3
    again = run_jobs(jobs, work, skip_existing=False)  # without it, every job runs
    assert len(again.done) == 3 and png_values(tmp_path / "out" / "a.png") == {BYTES["black"]}


def test_arguments_naming_nothing_count_as_failed_inputs(tmp_path: Path) -> None:
    jobs = _plan(tmp_path, {"a": ["black"]})
    problem = Problem("empty/", "directory empty/ has no .safetensors file")
    events = Recorder()
    summary = run_jobs(jobs, colour_png, problems=[problem], events=events)
    assert summary.total == 2 and len(summary.done) == 1
    (failed,) = summary.failed
    assert failed.name == "empty/" and failed.job is None
    assert isinstance(failed.error, InputFileError) and str(failed.error) == problem.message
    assert events.results[0] == failed  # reported first, before the jobs start


def test_concurrency_runs_jobs_at_the_same_time(tmp_path: Path) -> None:
    jobs = _plan(tmp_path, {f"l{k}": ["white"] for k in range(7)})
    together = threading.Barrier(3, timeout=30)  # only passes when 3 jobs run at once
    threads: set[str] = set()

    def work(job: Job) -> None:
        if job.index < 3:
            together.wait()
        threads.add(threading.current_thread().name)
        colour_png(job)

    summary = run_jobs(jobs, work, concurrency=3)
    assert len(summary.done) == 7 and summary.failed == [], [str(r.error) for r in summary.failed]
    assert len(threads) == 3 and threading.current_thread().name not in threads
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"l{k}.png" for k in range(7)]
    with pytest.raises(ConfigError, match="concurrency 0"):
        run_jobs(jobs, work, concurrency=0)


def test_cancel_drops_jobs_not_started_and_a_rerun_finishes_them(tmp_path: Path) -> None:
    jobs = _plan(tmp_path, {f"l{k}": ["black"] for k in range(5)})
    cancel = threading.Event()

    def work(job: Job) -> None:
        colour_png(job)
        if job.index == 1:
            cancel.set()

    first = run_jobs(jobs, work, cancel=cancel)
    assert first.interrupted and [r.job for r in first.done] == jobs[:2] and first.total == 5
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["l0.png", "l1.png"]
    second = run_jobs(jobs, colour_png, skip_existing=True, cancel=threading.Event())
    assert not second.interrupted and len(second.skipped) == 2 and len(second.done) == 3


def test_failing_write_leaves_no_partial_output(tmp_path: Path) -> None:
    jobs = _plan(tmp_path, {"a": ["white"], "b": ["white"]})
    (tmp_path / "out" / "b.png").mkdir()  # the atomic rename onto a directory fails
    summary = run_jobs(jobs, colour_png)
    assert [r.job for r in summary.done] == [jobs[0]]
    assert [r.job for r in summary.failed] == [jobs[1]]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_ranks_of_a_sharded_run_write_every_output_once(tmp_path: Path) -> None:
    jobs = _plan(tmp_path, {f"l{k}": ["white" if k % 2 else "black"] for k in range(10)})
    written: list[Path] = []

    def work(job: Job) -> None:
        assert not job.output.exists(), f"{job.output} written twice"
        colour_png(job)
        written.append(job.output)

    summaries = [run_jobs(shard(jobs, rank, 3), work, skip_existing=True) for rank in range(3)]
    assert [len(s.done) for s in summaries] == [4, 3, 3]
    assert sorted(written) == sorted(j.output for j in jobs)
    for job in jobs:
        assert png_values(job.output) == {BYTES["white" if job.index % 2 else "black"]}


def test_job_engine_imports_no_front_end() -> None:
    code = (
        "import sys, pid_trt.jobs\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'typer', 'torch') or m.startswith('pid_trt.cli'))\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
