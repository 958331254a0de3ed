"""Jobs: each input paired with the output it writes (:func:`assign_outputs`); resuming;
splitting among processes.

Outputs are named by one ``-o`` value:

- a directory (existing, ending in ``/``, or without a suffix): ``DIR/<stem><default suffix>``
  (``DIR/<stem>.png`` for ``pidtrt decode``);
- a pattern with ``{stem}`` (the input's name without its input suffix), ``{name}`` (its
  file name), ``{parent}`` (its folder's name) or ``{index}`` (its position, from 0), e.g.
  ``out/{parent}_{stem}.safetensors``; the suffix picks the output's format.

Two inputs that would write the same output are refused before anything runs. An output
counts as existing (for ``--skip-existing``) when the file is there, or, for a PNG, its
``_0`` image (the first of a batched input's ``stem_k.png``, :func:`pid_trt.io.png_paths`):
workers write each file atomically (:mod:`pid_trt.atomic`), so an existing output is a
complete one and a rerun resumes where an interrupted run stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pid_trt.errors import ConfigError
from pid_trt.jobs.inputs import LATENT_SUFFIX
from pid_trt.quoting import printable, quote

#: The placeholders an output pattern may use.
PLACEHOLDERS = ("{stem}", "{name}", "{parent}", "{index}")

T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    """One unit of work: its input (a file, or e.g. a prompt), the output it writes, and its
    position in the whole run's job list (the same on every process of a sharded run)."""

    source: Path | str
    output: Path
    index: int = 0

    @property
    def name(self) -> str:
        """The input as reported in messages: the path as given, or the text."""
        return os.fspath(self.source)


def is_dir_target(output: str | os.PathLike[str]) -> bool:
    """``output`` names a directory: one that exists, one ending in ``/``, or a name without a suffix."""
    text = os.fspath(output)
    path = Path(text)
    return path.is_dir() or text.endswith(("/", os.sep)) or not path.suffix


def assign_outputs(
    inputs: Sequence[Path],
    output: str | os.PathLike[str],
    *,
    single: bool,
    strip: Sequence[str] = (LATENT_SUFFIX,),
    default_suffix: str = ".png",
    what: str = "latent files",
) -> list[Job]:
    """Pair each input with its output (see the module docstring). ``single``: the command
    was given one file, so ``output`` may name that one file. ``strip``: the input suffixes
    ``{stem}`` drops; ``default_suffix``: the output suffix in a directory; ``what``: the
    inputs' name in messages. Raises :class:`ConfigError` for an ``output`` that cannot name
    several outputs, a bad pattern, or two inputs writing one output."""
    text = os.fspath(output)
    patterned = any(p in text for p in PLACEHOLDERS)
    if single and not patterned and not is_dir_target(output):
        return [Job(inputs[0], Path(text), 0)]
    if patterned:

        def name(i: int, src: Path) -> Path:
            try:
                return Path(
                    text.format(stem=_stem(src, strip), name=src.name, parent=src.parent.name or ".", index=i)
                )
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(
                    f"-o {quote(text, 200)}: bad pattern ({printable(exc)}); use {', '.join(PLACEHOLDERS)} (and {{{{ }}}} for braces)"
                ) from None
    elif is_dir_target(output):

        def name(i: int, src: Path) -> Path:
            return Path(text) / f"{_stem(src, strip)}{default_suffix}"
    else:
        raise ConfigError(
            f"-o {printable(text)} names one file, but {len(inputs)} {what} are given: pass a directory (-o out/) "
            f"or a pattern (-o 'out/{{stem}}{default_suffix}')"
        )
    jobs = [Job(src, name(i, src), i) for i, src in enumerate(inputs)]
    by_output: dict[Path, Job] = {}
    for job in jobs:
        key = job.output.resolve()
        if key in by_output:
            raise ConfigError(
                f"{printable(by_output[key].name)} and {printable(job.name)} would both write {printable(job.output)}: add {{parent}} or {{index}} "
                "to the -o pattern"
            )
        by_output[key] = job
    return jobs


def _stem(src: Path, strip: Sequence[str]) -> str:
    for suffix in strip:
        if src.name.endswith(suffix):
            return src.name.removesuffix(suffix)
    return src.name


def make_parents(jobs: Sequence[Job]) -> None:
    """Create every output's folder (before the run, so that a folder that cannot be made
    fails at once, not per job)."""
    for job in jobs:
        job.output.parent.mkdir(parents=True, exist_ok=True)


def output_exists(job: Job) -> bool:
    """The job's output is there (a PNG of a batched input counts by its ``_0`` image)."""
    out = job.output
    if out.exists():
        return True
    return out.suffix.lower() == ".png" and out.with_name(f"{out.stem}_0{out.suffix}").exists()


def split_existing(
    jobs: Sequence[Job], exists: Callable[[Job], bool] = output_exists
) -> tuple[list[Job], list[Job]]:
    """(jobs still to run, jobs whose output exists), each in the given order: how a rerun resumes."""
    todo: list[Job] = []
    done: list[Job] = []
    for job in jobs:
        (done if exists(job) else todo).append(job)
    return todo, done


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """This process's share of a job list, for ``world_size`` processes (e.g. under torchrun):
    items ``rank``, ``rank + world_size``, ... in order. The shares of ranks 0 .. world_size-1
    are disjoint and together hold every item; they depend only on the list, so shard the
    whole planned list (before skipping existing outputs) and every rank agrees on it."""
    if world_size < 1:
        raise ConfigError(f"world size {world_size}: expected at least 1 process")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank}: expected 0 .. {world_size - 1} for a world size of {world_size}")
    return list(items[rank::world_size])


#: The former name of :func:`assign_outputs` ("plan" is a decode's size plan: :meth:`pid_trt.Decoder.plan`).
plan_jobs = assign_outputs
