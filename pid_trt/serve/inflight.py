"""Answers decoded and not yet sent: a model instance hands each PNG request's answer to a
sender that runs when its PNGs are encoded, and goes on to decode the next batch.

:func:`answer_requests` decodes one batch (:func:`pid_trt.serve.batch.decode_requests_later`):
a request that needs no encode (float ``image`` only, or an error) is returned for the caller
to answer at once; a request with PNGs is handed to its ``send``, called exactly once with its
:class:`~pid_trt.serve.batch.DecodeResult` on the writer thread that finishes its last PNG.
:class:`InFlight` counts the PNG images whose answer is not yet sent and bounds them:
:meth:`InFlight.wait_for_room`, called before each decode, blocks while more than
``max_images`` are held, so a burst cannot queue encodes (and the pixels and PNG bytes they
hold) without bound: at most ``max_images`` plus one batch's images are held at once (``peak``
records the most). :meth:`InFlight.drain` waits for every answer in flight (a model instance
calls it before it closes its decoder).

No Triton import here: :mod:`pid_trt.serve.model` supplies ``send``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING

from pid_trt.serve.batch import STEPS, DecodeRequest, DecodeResult, Pending, decode_requests_later

if TYPE_CHECKING:
    from pid_trt.decoder import Decoder
    from pid_trt.tiling import TileOptions

log = logging.getLogger("pid_trt.serve")

#: A request's sender: called once with the request's finished result.
Send = Callable[[DecodeResult], None]


class InFlight:
    """The PNG images of answers handed to a sender and not yet sent, at most ``max_images``
    before :meth:`wait_for_room` blocks (the writer's rule: about 2 per encoding thread).

    ``images``: held now; ``answers``: answers not yet sent; ``peak``: the most images held
    at once; ``waits``: how many times :meth:`wait_for_room` had to block."""

    def __init__(self, max_images: int) -> None:
        if max_images < 1:
            raise ValueError(f"max_images {max_images}: expected at least 1 image")
        self.max_images = max_images
        self.images = 0
        self.answers = 0
        self.peak = 0
        self.waits = 0
        self._changed = threading.Condition()

    def has_room(self) -> bool:
        """Whether a decode may start now (no more than ``max_images`` held)."""
        with self._changed:
            return self.images <= self.max_images

    def wait_for_room(self) -> None:
        """Block while more than ``max_images`` images wait for their answers to be sent."""
        with self._changed:
            if self.images > self.max_images:
                self.waits += 1
            while self.images > self.max_images:
                self._changed.wait()

    def send_when_ready(self, pending: Pending, send: Send, what: str = "request") -> None:
        """Call ``send(result)`` once ``pending``'s answer is ready: here and now when it is
        (no PNG to wait for), else on the thread that resolves it. A sender that raises is
        logged (``what``: the request's name); its images are released either way."""
        with self._changed:
            self.images += pending.images
            self.answers += 1
            self.peak = max(self.peak, self.images)

        def done(answer: Future[DecodeResult]) -> None:
            try:
                send(answer.result())
            except Exception as exc:  # the request is lost to its client, never the instance's other ones
                log.error(
                    "%s: answer not sent (%s: %s)", what, type(exc).__name__, " ".join(str(exc).split())
                )
            finally:
                with self._changed:
                    self.images -= pending.images
                    self.answers -= 1
                    self._changed.notify_all()

        pending.answer.add_done_callback(done)

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every answer handed to a sender is sent; False if ``timeout_s`` passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._changed:
            while self.answers:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
        return True


def answer_requests(
    decoder: Decoder,
    requests: Sequence[DecodeRequest],
    sends: Sequence[Send],
    inflight: InFlight,
    *,
    steps: int = STEPS,
    tiling: TileOptions | None = None,
    decoded: Callable[[list[Pending]], None] | None = None,
) -> list[Pending]:
    """Wait for room in ``inflight``, decode ``requests`` and return as soon as the batch is
    decoded: one :class:`~pid_trt.serve.batch.Pending` per request, in order. One with
    ``images == 0`` needs no encode: the caller answers it with its ``result``, now; one with
    PNGs is ``sends[i]``'s, called once its PNGs are encoded (its ``result`` is then still
    being completed: read only ``tiled`` from it). ``decoded``: called with them before any
    PNG answer can be sent (a server's counters, so that a client that has its answer sees
    them counted)."""
    if len(sends) != len(requests):
        raise ValueError(f"{len(sends)} senders for {len(requests)} requests: expected one each")
    inflight.wait_for_room()
    pending = decode_requests_later(decoder, requests, steps, tiling)
    if decoded is not None:
        decoded(pending)
    for p, send, req in zip(pending, sends, requests, strict=True):
        if p.images:
            inflight.send_when_ready(p, send, req.what)
    return pending
