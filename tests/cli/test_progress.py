"""The CLI's view of a many-input run: failure lines, the summary line, the exit code."""

from __future__ import annotations

from pathlib import Path

from pid_trt.cli.errors import EXIT_ENV, EXIT_USAGE
from pid_trt.cli.progress import render_summary, summary_exit_code
from pid_trt.errors import InputFileError, ResourceError
from pid_trt.jobs import Job, JobResult, Outcome, Summary
from pid_trt.serve.client import ServeRequestError


def _failed(name: str, error: Exception, job: bool = True) -> JobResult:
    return JobResult(name, Outcome.FAILED, Job(Path(name), Path("o.png")) if job else None, error)


def test_exit_code_is_the_worst_failure_and_130_when_interrupted() -> None:
    ok = JobResult("a", Outcome.DONE, Job(Path("a"), Path("a.png")))
    assert summary_exit_code(Summary([ok], planned=1)) == 0
    assert summary_exit_code(Summary([ok, _failed("b", InputFileError("bad b"))])) == EXIT_USAGE
    assert (
        summary_exit_code(Summary([_failed("b", InputFileError("bad")), _failed("c", ResourceError("big"))]))
        == 3
    )
    assert summary_exit_code(Summary([_failed("d", FileNotFoundError(2, "No such file", "d"))])) == EXIT_ENV
    assert summary_exit_code(Summary([_failed("e", ServeRequestError("invalid", "bad shape"))])) == EXIT_USAGE
    assert summary_exit_code(Summary([_failed("f", ServeRequestError("connection", "refused"))])) == EXIT_ENV
    assert summary_exit_code(Summary([_failed("g", InputFileError("bad"))], interrupted=True)) == 130


def test_summary_names_each_failed_input_once() -> None:
    summary = Summary(
        [
            _failed("empty/", InputFileError("directory empty/ has no .safetensors file"), job=False),
            JobResult("a", Outcome.SKIPPED, Job(Path("a"), Path("a.png"))),
            _failed("x.safetensors", ServeRequestError("timeout", "no answer in\n600 s")),
            _failed("y.safetensors", InputFileError("latent file y.safetensors: too short")),
        ],
        planned=5,
        seconds=1.25,
    )
    assert render_summary(summary, "torch").splitlines() == [
        "decoded 0, skipped 1 (output exists), failed 3 of 5 in 1.2 s (torch)",
        "failed: directory empty/ has no .safetensors file",
        "failed: x.safetensors: no answer in 600 s (timeout)",
        "failed: latent file y.safetensors: too short",
    ]
    summary.interrupted = True
    assert render_summary(summary, "torch").startswith("interrupted: decoded 0,")
    assert render_summary(summary, "torch").splitlines()[0].endswith("; rerun with --skip-existing to resume")
