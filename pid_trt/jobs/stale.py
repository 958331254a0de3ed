"""Leftover temp files of a killed run: which of them a job owns, and removing them when a
run restarts.

A process killed while writing leaves its temp file (:mod:`pid_trt.atomic`, named after the
target, its pid and host) beside the target. A rerun over the same jobs removes those of its
own jobs' outputs whose writer is gone (:func:`pid_trt.atomic.writer_gone`); a temp file of a
live writer (another rank, another run) is never touched.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from pid_trt.atomic import STALE_GRACE_S, remove_stale_temps
from pid_trt.jobs.outputs import Job

_SEPARATORS = ("_", ".")


def owned_names(job: Job) -> Callable[[str], bool]:
    """Which target names in the folder of ``job.output`` are the job's: its output's name;
    names that extend its output's stem, or its input file's stem, with ``_`` or ``.`` (a
    batch's ``stem_k.png``, ``stem_vae.png``, ``stem_compare.json``, encode-image's
    ``stem_sigma0.200.safetensors``)."""
    output = Path(job.output)
    stems = {output.stem}
    if isinstance(job.source, os.PathLike):
        stems.add(Path(job.source).name.split(".", 1)[0])
    prefixes = tuple(stem + sep for stem in stems if stem for sep in _SEPARATORS)

    def owns(name: str) -> bool:
        return name == output.name or name.startswith(prefixes)

    return owns


def remove_stale_outputs(jobs: Sequence[Job], started: float, grace: float = STALE_GRACE_S) -> list[Path]:
    """Remove the leftover temp files of ``jobs``' outputs (:func:`owned_names`) in their
    output folders, whose writers are gone; ``started``: the run's start (``time.time()``).
    Returns the files removed."""
    by_folder: dict[Path, list[Callable[[str], bool]]] = {}
    for job in jobs:
        by_folder.setdefault(Path(job.output).parent, []).append(owned_names(job))
    removed: list[Path] = []
    for folder, owners in by_folder.items():

        def owned(name: str, owners: list[Callable[[str], bool]] = owners) -> bool:
            return any(owns(name) for owns in owners)

        removed += remove_stale_temps(folder, owned, started, grace)
    return removed
