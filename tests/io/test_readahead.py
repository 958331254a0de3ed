"""The read-ahead of a run's inputs: in order, bounded, each read's error raised by its own
take; a decode run over real latent files reads the next files while one is decoded."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from pid_trt.errors import InputFileError
from pid_trt.io import read_latent_file, write_latent_file
from pid_trt.io.readahead import ReadAhead
from pid_trt.jobs import plan_jobs, run_jobs
from pid_trt.jobs.readahead import current_read_ahead, read_latent


class CountingRead:
    """A reader that records which thread read each key and how many reads were running or
    done but not yet taken (its caller's bound)."""

    def __init__(self) -> None:
        self.threads: dict[int, str] = {}
        self.lock = threading.Lock()
        self.gate = threading.Event()  # closed: the read of ``held`` waits for it (10 s at most)
        self.gate.set()
        self.held: int | None = None

    def __call__(self, key: int) -> int:
        if key == self.held:
            self.gate.wait(10)
        with self.lock:
            self.threads[key] = threading.current_thread().name
        if key == 3:
            raise InputFileError(f"input {key}: unreadable")
        return key * 10


def test_results_come_in_order_read_on_another_thread_bounded_by_depth() -> None:
    read = CountingRead()
    keys = list(range(8))
    got = []
    with ReadAhead(keys, read, depth=2) as ahead:
        for key in keys:
            try:
                got.append(ahead.take(key))
            except InputFileError as exc:
                got.append(str(exc))
            assert len(read.threads) <= key + 1 + 2  # never more than depth past the one taken
        assert ahead.peak == 2
    assert got == [0, 10, 20, "input 3: unreadable", 40, 50, 60, 70]
    assert all(name.startswith("pidtrt-read") for name in read.threads.values())
    assert threading.current_thread().name not in read.threads.values()


def test_out_of_order_take_reads_in_place_and_close_drops_reads_not_started() -> None:
    read = CountingRead()
    read.held = 0
    read.gate.clear()  # the background thread blocks in its first read (key 0)
    ahead = ReadAhead(list(range(10)), read, depth=3)
    assert ahead.take(7) == 70  # not the next key: read now, in this thread
    assert read.threads[7] == threading.current_thread().name
    read.gate.set()
    ahead.close()
    assert set(read.threads) <= {0, 1, 2, 7}  # nothing past the depth, nothing after close
    with pytest.raises(ValueError, match="depth 0"):
        ReadAhead([1], read, depth=0)


def test_a_decode_run_reads_the_next_latent_files_ahead(tmp_path: Path) -> None:
    """run_jobs (in order) announces its files; a worker reading through jobs.read_latent gets
    each file as read_latent_file reads it, the next ones read ahead (2 at most), and a broken
    file fails its own job alone with the reader's one-line error."""
    src = tmp_path / "in"
    src.mkdir()
    gen = torch.Generator().manual_seed(0)
    for k in range(5):
        write_latent_file(src / f"l{k}.safetensors", torch.randn(1, 16, 2, 3, generator=gen))
    (src / "l2.safetensors").write_bytes(b"not a safetensors file")
    jobs = plan_jobs(sorted(src.iterdir()), tmp_path / "out", single=False)
    seen: dict[str, torch.Tensor] = {}
    ahead: list[ReadAhead | None] = []

    def work(job) -> None:
        ahead.append(current_read_ahead())
        seen[Path(job.name).name] = read_latent(job.source).latent

    summary = run_jobs(jobs, work)
    failed = [r for r in summary.results if r.error is not None]
    assert [Path(r.name).name for r in failed] == ["l2.safetensors"]
    with pytest.raises(InputFileError) as direct:
        read_latent_file(src / "l2.safetensors")
    assert str(failed[0].error) == str(direct.value)
    assert sorted(seen) == ["l0.safetensors", "l1.safetensors", "l3.safetensors", "l4.safetensors"]
    for name, latent in seen.items():
        assert torch.equal(latent, read_latent_file(src / name).latent)
    made = ahead[1]  # made by the first job's read, the same one for the rest of the run
    assert ahead[0] is None and made is not None and all(a is made for a in ahead[1:])
    assert made.peak == 2
    assert current_read_ahead() is None  # gone with the run
