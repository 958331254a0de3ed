"""A bounded read-ahead: the next input(s) of a run read on a background thread while the
caller decodes the current one, so reading a latent file (its bytes, the float32 copy, the
NaN/Inf check) is off the decoding thread's critical path.

:class:`ReadAhead` reads ``keys`` in order with ``read``, at most ``depth`` results ahead of
the caller (memory stays bounded: ``depth`` read inputs at most, plus the one in use).
:meth:`ReadAhead.take` hands them back in the same order; a read's error is raised there, by
the take of its own key, so a bad file fails its own job alone. Used by the decode runs over
many files (:mod:`pid_trt.jobs.readahead`) and by ``pidtrt bench --pipeline``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Inputs read ahead of the one being decoded, by default.
DEFAULT_DEPTH = 2


class ReadAhead(Generic[K, V]):
    """``read(key)`` of each of ``keys``, in order, on one background thread, at most ``depth``
    (>= 1) ahead of :meth:`take`. Use as a context manager, or call :meth:`close`.

    ``peak``: the most results that were read or being read, not yet taken, at once.
    """

    def __init__(self, keys: Sequence[K], read: Callable[[K], V], depth: int = DEFAULT_DEPTH) -> None:
        if depth < 1:
            raise ValueError(f"read-ahead depth {depth}: expected at least 1")
        self._keys, self._read, self.depth = list(keys), read, depth
        self._queued: deque[tuple[K, Future[V]]] = deque()
        self._next = 0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="pidtrt-read")
        self.peak = 0
        self._fill()

    def __enter__(self) -> ReadAhead[K, V]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fill(self) -> None:
        with self._lock:
            while self._pool is not None and len(self._queued) < self.depth and self._next < len(self._keys):
                key = self._keys[self._next]
                self._next += 1
                self._queued.append((key, self._pool.submit(self._read, key)))
                self.peak = max(self.peak, len(self._queued))

    def take(self, key: K) -> V:
        """The result of ``read(key)``: the one read ahead when ``key`` is the next in order
        (its error raised here), else read now, in this thread (the caller went out of order)."""
        with self._lock:
            head = self._queued[0] if self._queued else None
            if head is not None and head[0] == key:
                self._queued.popleft()
        if head is None or head[0] != key:
            return self._read(key)
        self._fill()  # the next read starts while this one is finished or waited for
        return head[1].result()

    def close(self) -> None:
        """Drop the reads not started, wait for the one running (if any), stop the thread."""
        with self._lock:
            pool, self._pool = self._pool, None
            for _, future in self._queued:
                future.cancel()
            self._queued.clear()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
