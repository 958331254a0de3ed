"""Batch jobs over many inputs: which files the arguments name (:mod:`.inputs`), the output
each writes, resuming and sharding (:mod:`.outputs`), running a worker over them
(:mod:`.runner`, which first removes a killed run's leftover temp files: :mod:`.stale`),
what the run did (:mod:`.summary`) and one latent file's decode (:mod:`.decode`); a run
split among the processes of a ``torchrun`` launch (:mod:`.distributed`: this rank, its device and threads, the ranks'
results gathered).

Used by ``pidtrt decode DIR|GLOB ...``; the pieces know nothing of decoding, so a command
over many prompts or images, or one process of a multi-process run (:func:`shard`), reuses
them with its own worker. No printing, no exit codes: the front end does both.
"""

from pid_trt.jobs.inputs import LATENT_SUFFIX, Problem, expand_inputs, is_single
from pid_trt.jobs.outputs import (
    PLACEHOLDERS,
    Job,
    assign_outputs,
    is_dir_target,
    make_parents,
    output_exists,
    plan_jobs,
    shard,
    split_existing,
)
from pid_trt.jobs.runner import RunEvents, run_jobs
from pid_trt.jobs.summary import JobResult, Outcome, Summary

__all__ = [
    "LATENT_SUFFIX",
    "PLACEHOLDERS",
    "Job",
    "JobResult",
    "Outcome",
    "Problem",
    "RunEvents",
    "Summary",
    "assign_outputs",
    "expand_inputs",
    "is_dir_target",
    "is_single",
    "make_parents",
    "output_exists",
    "plan_jobs",
    "run_jobs",
    "shard",
    "split_existing",
]
