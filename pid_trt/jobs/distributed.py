"""One process of a multi-process run (``torchrun``): which rank it is, its device and CPU
threads, and the whole run's results gathered from every rank.

torchrun starts ``WORLD_SIZE`` copies of a command and tells each its ``RANK`` (0 ..
WORLD_SIZE-1, over all nodes), ``LOCAL_RANK`` (0 .. LOCAL_WORLD_SIZE-1 on its node) and the
rendezvous address (``MASTER_ADDR`` / ``MASTER_PORT``). Every rank plans the same job list
from the same arguments and runs its :func:`pid_trt.jobs.shard` of it, so no two ranks write
one file; outputs are written atomically, so a rank that dies leaves no half-written file,
and a rerun with ``--skip-existing`` redoes only what is missing. :class:`RankGroup` gathers
each rank's results (torch.distributed over gloo, CPU only) so that rank 0 reports the whole
run and every rank can exit with the run's status.

Without ``RANK`` / ``WORLD_SIZE``, or with a world size of 1, a command runs as one process,
exactly as it does outside torchrun. No printing here: the front end does it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pid_trt.errors import BackendUnavailableError, ConfigError, PidTrtError
from pid_trt.jobs.summary import JobResult, Outcome, Summary
from pid_trt.quoting import printable, quote

if TYPE_CHECKING:
    from pid_trt.options import RuntimeOptions

#: How long one collective (the start-up handshake, the final gather of results) waits for
#: the other ranks. The gather waits for the slowest rank's whole shard, so this is long; a
#: rank that dies does not make the others wait for it: torchrun stops the whole group.
GATHER_TIMEOUT = datetime.timedelta(hours=24)

#: The environment torchrun sets for each process it starts.
ENV_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """Where this process stands in a multi-process run. ``rank``: 0 .. world_size-1 over all
    nodes; ``local_rank``: 0 .. local_world_size-1 among the processes of this node (its GPU
    index). The default is one process alone."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        """More than one process takes part: shard the jobs, gather the results."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that reports the whole run."""
        return self.rank == 0


def _int_var(env: Mapping[str, str], name: str, low: int, high: int | None = None) -> int:
    text = env[name]
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        span = f"{low} .. {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{name}={quote(text)}: expected a whole number, {span}")
    return value


def world_from_env(env: Mapping[str, str] | None = None) -> World:
    """This process's :class:`World`, read from torchrun's variables (``env``: default
    ``os.environ``). Neither ``RANK`` nor ``WORLD_SIZE`` set, or a world size of 1: one
    process. Raises a one-line :class:`ConfigError` for one of the two without the other, a
    value that is not a whole number in range, a multi-process world without ``LOCAL_RANK``
    or without the rendezvous address (``MASTER_ADDR`` / ``MASTER_PORT``)."""
    env = os.environ if env is None else env
    has_rank, has_size = "RANK" in env, "WORLD_SIZE" in env
    if not has_rank and not has_size:
        return World()
    if has_rank != has_size:
        given, missing = ("RANK", "WORLD_SIZE") if has_rank else ("WORLD_SIZE", "RANK")
        raise ConfigError(
            f"{given}={printable(env[given], 80)} is set without {missing}: a multi-process run (torchrun) sets both; "
            f"unset {given} to run as one process"
        )
    world_size = _int_var(env, "WORLD_SIZE", 1)
    rank = _int_var(env, "RANK", 0, world_size - 1)
    if world_size == 1:
        return World()
    if "LOCAL_RANK" not in env:
        raise ConfigError(
            f"WORLD_SIZE={world_size} without LOCAL_RANK: each process needs its index on its node "
            "(torchrun sets it)"
        )
    unset = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
    if unset:
        raise ConfigError(
            f"WORLD_SIZE={world_size} without {' and '.join(unset)}: the ranks meet there (torchrun sets them)"
        )
    local_size = _int_var(env, "LOCAL_WORLD_SIZE", 1, world_size) if "LOCAL_WORLD_SIZE" in env else world_size
    local_rank = _int_var(env, "LOCAL_RANK", 0, local_size - 1)
    return World(rank, world_size, local_rank, local_size)


def rank_device(world: World, device: str) -> str:
    """The device this rank runs on: a plain ``cuda`` becomes ``cuda:LOCAL_RANK`` in a
    multi-process run (one GPU per process of a node); anything else is kept as given."""
    if world.distributed and device == "cuda":
        return f"cuda:{world.local_rank}"
    return device


def bind_cuda_device(device: str) -> None:
    """Make ``cuda:N`` the current CUDA device of this process, so that libraries that use
    "the current device" (TensorRT, CUDA graphs) use this rank's GPU too. A no-op for the CPU
    or a plain ``cuda``; a :class:`BackendUnavailableError` when GPU ``N`` is not there."""
    if not device.startswith("cuda:"):
        return
    import torch

    index = int(device.split(":", 1)[1])
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        raise BackendUnavailableError(f"device {device}: this node has {count} CUDA device(s)")
    torch.cuda.set_device(index)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def rank_threads(world: World, threads: int | None, cores: int | None = None) -> int | None:
    """torch's intra-op threads for this process: ``threads`` when given; in a multi-process
    run the node's ``cores`` (default :func:`usable_cores`) shared among its ranks, at least 1
    each (torchrun would otherwise leave each rank 1 thread); None (torch's own choice) for
    one process."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads {threads}: expected at least 1")
        return threads
    if not world.distributed:
        return None
    return max(1, (cores if cores is not None else usable_cores()) // world.local_world_size)


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op threads (ONNX Runtime sessions follow torch's count); None: leave them."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


class RankFailure(PidTrtError):
    """A failed input as a rank reported it: its one-line ``message`` and the exit ``code``
    that rank's front end gave it, so rank 0 can report every rank's failures."""

    def __init__(self, message: str, code: int, rank: int) -> None:
        super().__init__(message)
        self.code, self.rank = code, rank

    def __reduce__(self):
        return type(self), (str(self), self.code, self.rank)


#: How the front end words a failure: (one-line message, exit code).
Describe = Callable[[JobResult], tuple[str, int]]


def prepare_rank_process() -> None:
    """Set up a process of a multi-process run before it joins the others: Python tracebacks
    of every thread on a fatal signal (a rank that aborts in native code says where), and no
    Rust thread pool in Hugging Face ``tokenizers`` (``TOKENIZERS_PARALLELISM=false`` unless
    set: the ranks already share the node's cores, and fewer native threads are alive when
    the process exits)."""
    import faulthandler
    import sys

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not faulthandler.is_enabled():
        faulthandler.enable(file=sys.stderr, all_threads=True)


class RankGroup:
    """The ranks of a multi-process run, joined over torch.distributed's gloo backend (CPU,
    any node) for the duration of a ``with`` block; nothing at all for one process.

    Enter it before the work (a rank that cannot join fails at once, before writing), then
    :meth:`gather` once every rank has run its shard; leaving the block leaves the group.
    """

    def __init__(self, world: World, timeout: datetime.timedelta = GATHER_TIMEOUT) -> None:
        self.world, self.timeout = world, timeout
        self._joined = False

    def __enter__(self) -> RankGroup:
        if self.world.distributed:
            import torch.distributed as dist

            prepare_rank_process()

            if not dist.is_available():
                raise BackendUnavailableError("this torch build has no torch.distributed: run one process")
            try:
                dist.init_process_group(
                    "gloo", init_method="env://", rank=self.world.rank, world_size=self.world.world_size,
                    timeout=self.timeout,
                )  # fmt: skip
            except (RuntimeError, ValueError) as exc:
                text = " ".join(str(exc).split())
                raise BackendUnavailableError(
                    f"rank {self.world.rank} of {self.world.world_size} could not join the others: {text}"
                ) from None
            self._joined = True
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._joined:
            import torch.distributed as dist

            self._joined = False
            if exc_type is None:  # leave together: no rank closes its connections while another
                with contextlib.suppress(RuntimeError):  # still reads from them
                    dist.barrier()
            dist.destroy_process_group()

    def gather(self, summary: Summary, describe: Describe) -> Summary:
        """The whole run's summary, on every rank: each rank's results (in rank order, with
        their jobs; failures as :class:`RankFailure` worded by ``describe``), the planned inputs summed,
        the wall time of the slowest rank, interrupted if any rank was. One process: its
        ``summary`` as it is."""
        if not self.world.distributed:
            return summary
        import torch.distributed as dist

        mine = {
            "rank": self.world.rank,
            "planned": summary.planned,
            "seconds": summary.seconds,
            "interrupted": summary.interrupted,
            "results": [
                (
                    r.name,
                    r.outcome.value,
                    r.job,
                    r.seconds,
                    *(describe(r) if r.outcome is Outcome.FAILED else ("", 0)),
                )
                for r in summary.results
            ],
        }
        reports: list = [None] * self.world.world_size
        dist.all_gather_object(reports, mine)
        return merge_reports(reports)


def merge_reports(reports: list[dict]) -> Summary:
    """One summary of the ranks' gathered reports (see :meth:`RankGroup.gather`)."""
    merged = Summary()
    for report in sorted(reports, key=lambda r: r["rank"]):
        merged.planned += report["planned"]
        merged.seconds = max(merged.seconds, report["seconds"])
        merged.interrupted = merged.interrupted or report["interrupted"]
        for name, outcome, job, seconds, message, code in report["results"]:
            error = RankFailure(message, code, report["rank"]) if outcome == Outcome.FAILED.value else None
            merged.results.append(JobResult(name, Outcome(outcome), job, error, seconds))
    return merged


def run_exit_code(summary: Summary) -> int:
    """The exit code of a gathered run: 130 when any rank was interrupted, else the highest
    code of a failed input (0: none failed)."""
    if summary.interrupted:
        return 130
    return max((r.error.code for r in summary.failed if isinstance(r.error, RankFailure)), default=0)


__all__ = [
    "ENV_NAMES",
    "GATHER_TIMEOUT",
    "RankFailure",
    "RankGroup",
    "World",
    "bind_cuda_device",
    "merge_reports",
    "rank_device",
    "rank_threads",
    "run_exit_code",
    "set_threads",
    "usable_cores",
    "world_from_env",
]


def rank_runtime(world: World, runtime: RuntimeOptions) -> RuntimeOptions:
    """Under torchrun, the runtime options of this rank: a plain ``cuda`` device becomes
    ``cuda:LOCAL_RANK``, also made the process's current CUDA device. One process: as given."""
    if not world.distributed:
        return runtime
    device = runtime.resolve().device
    mine = rank_device(world, device)
    bind_cuda_device(mine)
    return runtime if mine == device else replace(runtime, device=mine)
