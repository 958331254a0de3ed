"""A bounded, least-recently-used cache of backends, safe to use from several threads.

Each entry (a *slot*) holds one backend and the lock that serialises the decodes running on
it. ``with cache.use(key, create) as backend:`` takes the slot of ``key`` (creating the
backend on first use), holds its lock for the ``with`` block, and on exit closes the least
recently used backends beyond ``max_size``, each only after the decode using it has finished.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pid_trt.backends.base import Backend
from pid_trt.errors import ConfigError


@dataclass
class _Slot:
    """One cached backend and the lock that serialises the decodes running on it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    backend: Backend | None = None
    evicted: bool = False

    def close(self) -> None:
        """Close the backend (the caller holds ``lock``) and mark the slot dead."""
        self.evicted = True
        if self.backend is not None:
            self.backend.close()
            self.backend = None


class BackendCache:
    """Backends by key (e.g. (height, width, batch), or None for a backend that serves every
    size), at most ``max_size`` of them; see the module docstring."""

    def __init__(self, max_size: int) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ConfigError(f"max_backends={max_size!r}: expected an integer >= 1")
        self.max_size = max_size
        self._slots: OrderedDict[Hashable, _Slot] = OrderedDict()
        self._lock = threading.Lock()  # guards _slots and _closed
        self._closed = False

    @contextmanager
    def use(self, key: Hashable, create: Callable[[], Backend]) -> Iterator[Backend]:
        """The backend of ``key``, created by ``create()`` if absent, locked for the block."""
        while True:
            slot = self._slot(key)
            slot.lock.acquire()
            if not slot.evicted:
                break
            slot.lock.release()  # evicted between lookup and lock: take a fresh slot
        try:
            if slot.backend is None:
                slot.backend = create()
            yield slot.backend
        finally:
            slot.lock.release()
            self._evict()

    def keys(self) -> list[Hashable]:
        """Keys of the backends held now, least recently used first."""
        with self._lock:
            return [k for k, s in self._slots.items() if s.backend is not None]

    def close(self) -> None:
        """Close every backend (each after its running decode). Later use raises ConfigError."""
        with self._lock:
            self._closed = True
            slots = list(self._slots.values())
            self._slots.clear()
        for slot in slots:
            with slot.lock:
                slot.close()

    def _slot(self, key: Hashable) -> _Slot:
        """The slot of ``key`` (new if absent), marked most recently used."""
        with self._lock:
            if self._closed:
                raise ConfigError("this Decoder is closed: load a new one")
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot()
            self._slots.move_to_end(key)
            return slot

    def _evict(self) -> None:
        victims = []
        with self._lock:
            while len(self._slots) > self.max_size:
                victims.append(self._slots.popitem(last=False)[1])
        for slot in victims:
            with slot.lock:
                slot.close()
