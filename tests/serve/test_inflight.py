"""Answers handed to a sender once their PNGs are encoded (pid_trt.serve.inflight), without a
server: every request answered exactly once, the images held bounded, a drain that waits."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch

from pid_trt.io import write_images
from pid_trt.serve.batch import DecodeRequest, DecodeResult, Pending
from pid_trt.serve.inflight import InFlight, answer_requests
from tests.serve.conftest import request_inputs

#: Seconds a test waits for a thread it released before it calls it hung (never a timing check).
HANG_S = 120.0


@pytest.fixture(scope="module")
def decoder():
    from pid_trt import Decoder

    with Decoder.load(backbone="tiny", random_weights=True) as dec:
        yield dec


def test_images_held_are_bounded_and_each_answer_is_sent_once() -> None:
    """Limit 3, answers of 2 PNGs each: a decode may start while at most 3 are held, so at
    most 3 + 2 are ever held; the producer blocks until a send frees room, every answer is
    sent once, by the thread that resolves it, and drain returns once all are sent."""
    inflight = InFlight(max_images=3)
    futures = [Future() for _ in range(6)]
    sent: list[tuple[int, str]] = []

    def sender(k: int):
        return lambda result: sent.append((k, threading.current_thread().name))

    admitted = 0
    while admitted < len(futures) and inflight.has_room():
        inflight.send_when_ready(Pending(DecodeResult(), futures[admitted], images=2), sender(admitted))
        admitted += 1
    assert admitted == 2 and inflight.images == 4 and sent == []  # 0 -> 2 -> 4: no room after the second

    def produce() -> None:  # the rest, each after wait_for_room, as a model instance does
        for k in range(admitted, len(futures)):
            inflight.wait_for_room()
            inflight.send_when_ready(Pending(DecodeResult(), futures[k], images=2), sender(k))

    producer = threading.Thread(target=produce, name="producer")
    producer.start()
    deadline = time.monotonic() + HANG_S
    while inflight.waits == 0:  # it blocks before the third: 4 held > 3
        assert time.monotonic() < deadline, "the producer never waited for room"
        time.sleep(0.01)
    assert inflight.answers == 2 and sent == []
    for k, fut in enumerate(futures):  # each resolved in a thread of its own, as the encode pool does
        resolver = threading.Thread(target=fut.set_result, args=(DecodeResult(),), name=f"encoder-{k}")
        resolver.start()
        resolver.join(HANG_S)
    producer.join(HANG_S)
    assert not producer.is_alive(), "the producer never got room"
    assert inflight.drain(HANG_S)
    assert sorted(k for k, _ in sent) == list(range(6)), sent  # each answer once
    assert [name for k, name in sent if k < 2] == ["encoder-0", "encoder-1"]  # sent by the resolving thread
    assert inflight.images == 0 and inflight.answers == 0
    assert 4 <= inflight.peak <= 3 + 2 and inflight.waits >= 1


def test_a_failing_sender_releases_its_images_and_drain_times_out_on_an_unsent_answer() -> None:
    inflight = InFlight(max_images=1)

    def broken(result: DecodeResult) -> None:
        raise RuntimeError("sender closed")

    done: Future[DecodeResult] = Future()
    done.set_result(DecodeResult())
    inflight.send_when_ready(Pending(DecodeResult(), done, images=3), broken)
    assert inflight.images == 0 and inflight.answers == 0 and inflight.peak == 3
    waiting: Future[DecodeResult] = Future()
    inflight.send_when_ready(Pending(DecodeResult(), waiting, images=1), lambda r: None)
    assert not inflight.drain(timeout_s=0.0) and inflight.answers == 1
    waiting.set_result(DecodeResult())
    assert inflight.drain(timeout_s=0.0)
    with pytest.raises(ValueError, match="max_images 0: expected at least 1 image"):
        InFlight(0)


def test_answer_requests_sends_each_png_answer_once_and_returns_the_others(decoder, tmp_path: Path) -> None:
    """Batches of a PNG request, a float request and a malformed one, through a bounded
    InFlight: the float answer and the error come back from answer_requests (nothing to
    encode; never sent), the PNG answer is sent once encoded, exactly once; the PNG is the file
    write_images writes for that image; the images held never pass the limit plus one batch's."""
    config = decoder.config
    lat, cap = request_inputs(config, 1)
    nan = lat.copy()
    nan[0, 0, 0, 0] = np.nan
    inflight = InFlight(max_images=1)
    sent: dict[str, list[DecodeResult]] = {}
    now: dict[str, DecodeResult] = {}
    lock = threading.Lock()

    def sender(name: str):
        def send(result: DecodeResult) -> None:
            with lock:
                sent.setdefault(name, []).append(result)

        return send

    batches = 4
    for b in range(batches):
        reqs = [
            DecodeRequest(
                lat, cap, seed=np.array([[b]]), what=f"png{b}", outputs=frozenset({"png", "image"})
            ),
            DecodeRequest(lat, cap, seed=np.array([[b]]), what=f"float{b}", outputs=frozenset({"image"})),
            DecodeRequest(nan, cap, what=f"bad{b}"),
        ]
        counted: list[int] = []

        def decoded(batch: list[Pending], b: int = b, counted: list[int] = counted) -> None:
            with lock:  # a server's counters: updated before its PNG answer can be sent
                counted.append(len(sent.get(f"png{b}", [])))

        pending = answer_requests(decoder, reqs, [sender(r.what) for r in reqs], inflight, decoded=decoded)
        assert [p.images for p in pending] == [1, 0, 0] and counted == [0]
        now.update({r.what: p.result for r, p in zip(reqs, pending, strict=True) if not p.images})
    assert inflight.drain(HANG_S)
    assert sorted(sent) == [f"png{b}" for b in range(batches)]  # only the PNG answers went to a sender
    assert sorted(now) == sorted(f"{k}{b}" for k in ("float", "bad") for b in range(batches))
    assert all(len(v) == 1 for v in sent.values()), {k: len(v) for k, v in sent.items()}
    from PIL import Image

    for b in range(batches):
        (png,), flt, bad = sent[f"png{b}"], now[f"float{b}"], now[f"bad{b}"]
        assert png.error is None and flt.error is None and flt.png is None
        assert (
            str(bad.error)
            == f"bad{b}: tensor 'latent' has 1 NaN/Inf value(s) as float32, expected finite values"
        )
        served = tmp_path / f"served{b}.png"
        served.write_bytes(png.png[0])
        with Image.open(served) as im:
            text = {"pid-trt": im.text["pid-trt"]}
        (direct,) = write_images(torch.from_numpy(png.image), tmp_path / f"direct{b}.png", text=text)
        assert png.png == [direct.read_bytes()]
        want = decoder.decode(lat, cap, seed=b)  # both rows of a batch of 2: within its rounding
        for got in (flt.image, png.image):
            assert (torch.from_numpy(got) - want).abs().max().item() <= 1e-4
    assert inflight.images == 0 and inflight.peak <= 1 + 1


def test_a_failed_encode_fails_its_request_alone_once_the_last_png_is_done() -> None:
    """The answer of a request whose PNGs are being encoded resolves when the last one ends,
    whatever the order; a failed encode becomes the request's one-line error, no PNGs."""
    from pid_trt.serve.batch import _when_encoded

    first: Future[bytes] = Future()
    second: Future[bytes] = Future()
    answer = _when_encoded(DecodeResult(), [first, second], "request x")
    second.set_exception(OSError("disk\nfull"))
    assert not answer.done()
    first.set_result(b"png")
    result = answer.result(timeout=0)
    assert result.png is None
    assert str(result.error) == "request x: internal error (OSError: disk full)"
    good = _when_encoded(DecodeResult(), [first], "request y")  # already done: resolved at once
    assert good.result(timeout=0).png == [b"png"] and good.result().error is None
