"""BackendCache: least-recently-used eviction, per-slot locks, closing after the running decode."""

from __future__ import annotations

import threading
import time

import pytest

from pid_trt.backends.base import Backend
from pid_trt.backends.cache import BackendCache
from pid_trt.errors import ConfigError


class Recorder(Backend):
    """A backend that records its life (the cache is what is under test, not a network)."""

    name = "recorder"
    log: list[str] = []

    def __init__(self, key: object) -> None:
        self.key, self.closed = key, False
        Recorder.log.append(f"open {key}")

    @classmethod
    def from_request(cls, request: object) -> Recorder:
        return cls(request)

    def bind(self, cond):  # pragma: no cover - never decoded here
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True
        Recorder.log.append(f"close {self.key}")


@pytest.fixture(autouse=True)
def _fresh_log():
    Recorder.log = []


def test_cache_keeps_the_most_recent_and_closes_the_least_recent() -> None:
    cache = BackendCache(2)
    for key in ("a", "b", "a", "c"):
        with cache.use(key, lambda k=key: Recorder(k)):
            pass
    assert cache.keys() == ["a", "c"]
    assert Recorder.log == ["open a", "open b", "open c", "close b"]


def test_eviction_waits_for_the_decode_running_on_the_victim() -> None:
    cache = BackendCache(1)
    started, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def long_decode() -> None:
        with cache.use("a", lambda: Recorder("a")) as backend:
            started.set()
            release.wait(5)
            seen.append(backend.closed)  # still open while in use

    worker = threading.Thread(target=long_decode)
    worker.start()
    started.wait(5)

    def other_decode() -> None:
        with cache.use("b", lambda: Recorder("b")):
            pass  # on exit 'a' is the victim, but its decode holds its lock

    evictor = threading.Thread(target=other_decode)
    evictor.start()
    time.sleep(0.2)
    assert "open b" in Recorder.log and "close a" not in Recorder.log
    release.set()
    worker.join(5)
    evictor.join(5)
    assert seen == [False] and Recorder.log[-1] == "close a" and cache.keys() == ["b"]


def test_closed_cache_refuses_and_closes_everything() -> None:
    cache = BackendCache(3)
    with cache.use(None, lambda: Recorder(None)):
        pass
    cache.close()
    assert Recorder.log == ["open None", "close None"]
    with pytest.raises(ConfigError, match="closed"), cache.use(None, lambda: Recorder(None)):
        pass


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_cache_size_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_backends"):
        BackendCache(bad)  # type: ignore[arg-type]
