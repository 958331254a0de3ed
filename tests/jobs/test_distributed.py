"""One rank of a torchrun run, without torchrun: the environment read, the refusals, the
device and threads of a rank, and the gathered summary (a real gloo group of one process)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pid_trt.errors import ConfigError, InputFileError
from pid_trt.jobs import Job, JobResult, Outcome, Summary, shard
from pid_trt.jobs.distributed import (
    RankFailure,
    RankGroup,
    World,
    merge_reports,
    rank_device,
    rank_threads,
    run_exit_code,
    world_from_env,
)

TORCHRUN = {
    "RANK": "3",
    "WORLD_SIZE": "4",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "node0",
    "MASTER_PORT": "29500",
}


def test_no_torchrun_variables_is_one_process() -> None:
    assert world_from_env({}) == World()
    assert not World().distributed and World().is_main
    # torchrun --nproc_per_node 1: a world of one is the one-process run
    assert world_from_env({"RANK": "0", "WORLD_SIZE": "1"}) == World()


def test_torchrun_variables_are_read() -> None:
    world = world_from_env(TORCHRUN)
    assert world == World(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert world.distributed and not world.is_main
    # without LOCAL_WORLD_SIZE: the whole world may be on this node, share cores accordingly
    env = {k: v for k, v in TORCHRUN.items() if k != "LOCAL_WORLD_SIZE"}
    assert world_from_env(env).local_world_size == 4


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"RANK": "1"}, "RANK=1 is set without WORLD_SIZE"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set without RANK"),
        ({**TORCHRUN, "WORLD_SIZE": "two"}, "WORLD_SIZE='two': expected a whole number"),
        ({**TORCHRUN, "RANK": "4"}, "RANK='4': expected a whole number, 0 .. 3"),
        ({**TORCHRUN, "RANK": "-1"}, "RANK='-1'"),
        ({**TORCHRUN, "WORLD_SIZE": "0"}, "WORLD_SIZE='0'"),
        ({**TORCHRUN, "LOCAL_RANK": "2"}, "LOCAL_RANK='2': expected a whole number, 0 .. 1"),
        ({**TORCHRUN, "LOCAL_WORLD_SIZE": "5"}, "LOCAL_WORLD_SIZE='5'"),
        ({k: v for k, v in TORCHRUN.items() if k != "LOCAL_RANK"}, "without LOCAL_RANK"),
        ({k: v for k, v in TORCHRUN.items() if k != "MASTER_PORT"}, "without MASTER_PORT"),
    ],
)
def test_inconsistent_variables_are_refused_in_one_line(env: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(".", r"\.")) as info:
        world_from_env(env)
    assert "\n" not in str(info.value)


def test_each_rank_takes_its_gpu_and_its_share_of_the_cores() -> None:
    world = World(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert rank_device(world, "cuda") == "cuda:1"
    assert rank_device(world, "cuda:0") == "cuda:0"  # an index the user chose stays
    assert rank_device(world, "cpu") == "cpu"
    assert rank_device(World(), "cuda") == "cuda"
    assert rank_threads(world, None, cores=16) == 8
    assert rank_threads(World(3, 4, 1, 4), None, cores=2) == 1  # never 0
    assert rank_threads(world, 3, cores=16) == 3  # --threads wins
    assert rank_threads(World(), None, cores=16) is None  # one process: torch's own choice
    assert rank_threads(World(), 2) == 2


def test_shards_are_disjoint_and_cover_the_list() -> None:
    jobs = list(range(11))
    shares = [shard(jobs, r, 4) for r in range(4)]
    assert sorted(x for s in shares for x in s) == jobs
    assert shares[1] == [1, 5, 9]


def _result(name: str, outcome: Outcome, error: Exception | None = None) -> JobResult:
    return JobResult(name, outcome, Job(Path(name), Path(name + ".png")), error, 0.5)


def test_reports_merge_in_rank_order_with_each_failure_and_its_code() -> None:
    reports = [
        {"rank": 1, "planned": 2, "seconds": 3.0, "interrupted": False,
         "results": [("b", "done", None, 1.0, "", 0), ("d", "failed", None, 0.1, "d: bad file", 2)]},
        {"rank": 0, "planned": 3, "seconds": 2.0, "interrupted": False,
         "results": [("a", "skipped", None, 0.0, "", 0), ("c", "done", None, 1.0, "", 0), ("x/", "failed", None, 0, "no file", 3)]},
    ]  # fmt: skip
    merged = merge_reports(reports)
    assert merged.planned == 5 and merged.seconds == 3.0 and merged.total == 5
    assert [r.name for r in merged.results] == ["a", "c", "x/", "b", "d"]
    assert [len(merged.done), len(merged.skipped), len(merged.failed)] == [2, 1, 2]
    assert [(str(r.error), r.error.rank) for r in merged.failed] == [("no file", 0), ("d: bad file", 1)]
    assert run_exit_code(merged) == 3
    reports[0]["interrupted"] = True
    assert run_exit_code(merge_reports(reports)) == 130
    assert run_exit_code(merge_reports(reports[1:2])) == 3


def test_a_group_of_one_gathers_through_gloo(monkeypatch) -> None:
    """A real gloo process group (world of 1 forced distributed) gathers this rank's results."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))

    class Alone(World):
        @property
        def distributed(self) -> bool:
            return True

    summary = Summary(
        [_result("a", Outcome.DONE), _result("b", Outcome.FAILED, InputFileError("b: bad"))],
        planned=2,
        seconds=1.5,
    )
    import torch.distributed as dist

    with RankGroup(Alone()) as group:
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        merged = group.gather(summary, lambda r: (str(r.error), 2))
    assert not dist.is_initialized()  # left at the end of the block
    assert [(r.name, r.outcome) for r in merged.results] == [("a", Outcome.DONE), ("b", Outcome.FAILED)]
    assert [r.job for r in merged.results] == [r.job for r in summary.results]  # jobs travel too
    assert isinstance(merged.failed[0].error, RankFailure) and merged.failed[0].error.code == 2
    assert run_exit_code(merged) == 2 and merged.seconds == 1.5
    assert RankGroup(World()).gather(summary, lambda r: ("", 0)) is summary
