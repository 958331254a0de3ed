"""Latent files of a run read ahead: while one file decodes, the next ones are read (and
checked) on a background thread (:class:`pid_trt.io.readahead.ReadAhead`).

:func:`run_jobs` announces the sources of the jobs it runs in order (:func:`upcoming`); a
decode worker reads each file through :func:`read_latent`, which takes the file from the
read-ahead when it is the next one announced and reads it in place otherwise (outside a run,
or out of order). Nothing is read before a worker asks for a latent file, so a run over other
inputs (prompts) reads nothing. The read is the same :func:`pid_trt.io.read_latent_file`:
same checks, same one-line errors, each raised by its own job.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pid_trt.io imports torch: only once a worker reads a latent file
    from pid_trt.io.readahead import ReadAhead

#: Latent files read ahead of the one being decoded (:data:`pid_trt.io.readahead.DEFAULT_DEPTH`).
DEPTH = 2


class _Plan:
    """The sources a run will read, in order; its read-ahead made at the first read (with the
    net's config the worker reads with)."""

    def __init__(self, sources: Sequence[Path | str], depth: int) -> None:
        self.sources = [os.fspath(s) for s in sources]
        self.depth = depth
        self.ahead: ReadAhead[str, Any] | None = None
        self.config: Any = None

    def read(self, path: Path | str, config: Any) -> Any:
        from pid_trt.io.latent import read_latent_file
        from pid_trt.io.readahead import ReadAhead

        key = os.fspath(path)
        if self.ahead is None and key in self.sources:
            start = self.sources.index(key)
            self.config = config
            self.ahead = ReadAhead(
                self.sources[start:], lambda p: read_latent_file(p, config), self.depth
            )  # fmt: skip
        if self.ahead is None or config is not self.config:
            return read_latent_file(path, config)
        return self.ahead.take(key)

    def close(self) -> None:
        if self.ahead is not None:
            self.ahead.close()


_PLAN: ContextVar[_Plan | None] = ContextVar("pidtrt_read_plan", default=None)


@contextmanager
def upcoming(sources: Sequence[Path | str], depth: int = DEPTH) -> Iterator[None]:
    """Within the block, :func:`read_latent` reads ``sources`` ahead, in this order, ``depth``
    files at most; on leaving (Ctrl-C included), reads not started are dropped."""
    plan = _Plan(sources, depth)
    token = _PLAN.set(plan)
    try:
        yield
    finally:
        _PLAN.reset(token)
        plan.close()


def read_latent(path: Path | str, config: Any = None) -> Any:
    """:func:`pid_trt.io.read_latent_file` (``config``: the net's
    :class:`~pid_trt.config.NetConfig`), taken from the run's read-ahead when there is one."""
    plan = _PLAN.get()
    if plan is None:
        from pid_trt.io.latent import read_latent_file

        return read_latent_file(path, config)
    return plan.read(path, config)


def current_read_ahead() -> ReadAhead[str, Any] | None:
    """The running run's read-ahead (None outside a run, or before its first latent read)."""
    plan = _PLAN.get()
    return None if plan is None else plan.ahead
