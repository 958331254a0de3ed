"""Point 3: the engine store under faults: killed builds, concurrent builders and users.

Real processes (fork), real SIGKILL, real files; the "build" writes bytes so no TensorRT is
needed (the store is the same code for real plans: tests/compile/test_build.py).

Already covered in tests/stores/test_store.py (kept there): ::test_concurrent_puts_build_once
(2 and 4 builders, one build), ::test_sigkill_mid_build_leaves_no_manifest,
::test_manifest_naming_outside_path_refused (../x, /etc/passwd, .., sub/x, ''),
::test_symlink_out_of_store_refused, ::test_corrupt_engine_refused (same size other bytes,
truncated), ::test_stale_engine_refused_then_rebuilt, ::test_foreign_flavour_or_version_refused,
::test_artifact_without_manifest_is_not_committed, ::test_lock_timeout.

Added here: SIGKILL at five moments of a build, each repeated (KILL_REPEATS), and processes
that build and poll ``lookup`` at the same time (CONCURRENT_ROUNDS rounds of 2 and 4).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from pid_trt.errors import StoreError
from pid_trt.stores.artifacts import MANIFEST_SUFFIX, TEMP_PREFIX
from pid_trt.stores.store import EngineStore
from tests.stores.test_store import PLAN, make_key, run_together, write_plan

KILL_REPEATS = 3
CONCURRENT_ROUNDS = 5
MOMENTS = [
    "before_temp_write",  # lock held, nothing written yet
    "during_temp_write",  # half a plan in the temp file
    "after_rename_before_manifest",  # full plan under its final name, no manifest (not committed)
    "during_manifest_write",  # manifest temp file written, not renamed
    "after_commit",  # control: the engine is complete
]
_CTX = multiprocessing.get_context("fork")


def _stall(ready: Any) -> None:
    ready.set()
    time.sleep(120)  # until SIGKILLed


def _killed_builder(root: str, moment: str, ready: Any) -> None:
    """Child: build the engine and stall at ``moment`` (the parent kills it there)."""
    from pid_trt.stores import artifacts

    def build(tmp: Path) -> dict[str, Any]:
        if moment == "before_temp_write":
            _stall(ready)
        tmp.write_bytes(PLAN[: len(PLAN) // 2])
        if moment == "during_temp_write":
            _stall(ready)
        with open(tmp, "ab") as f:
            f.write(PLAN[len(PLAN) // 2 :])
        return {}

    if moment == "after_rename_before_manifest":
        artifacts.atomic_write_bytes = lambda path, data: _stall(ready)
    if moment == "during_manifest_write":
        real_replace = os.replace

        def replace(src, dst):
            if str(dst).endswith(MANIFEST_SUFFIX):
                _stall(ready)
            return real_replace(src, dst)

        os.replace = replace  # this forked child only
    EngineStore(root).put(make_key(), build)
    _stall(ready)


def _temps(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob(f"{TEMP_PREFIX}*"))


@pytest.mark.parametrize("repeat", range(KILL_REPEATS))
@pytest.mark.parametrize("moment", MOMENTS)
def test_sigkill_at_each_moment_leaves_store_consistent(tmp_path, moment, repeat):
    root = tmp_path / "engines"
    store, key = EngineStore(root), make_key()
    ready = _CTX.Event()
    child = _CTX.Process(target=_killed_builder, args=(str(root), moment, ready), daemon=True)
    child.start()
    assert ready.wait(30), f"child never reached {moment}"
    # The moment really is the one named (so the test cannot pass vacuously).
    plan, manifest = store.path_for(key), store.manifest_path_for(key)
    expect = {
        "before_temp_write": (False, False, 0),
        "during_temp_write": (False, False, 1),
        "after_rename_before_manifest": (True, False, 0),
        "during_manifest_write": (True, False, 1),
        "after_commit": (True, True, 0),
    }[moment]
    assert (plan.exists(), manifest.exists(), len(_temps(root))) == expect
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=10)
    assert child.exitcode == -signal.SIGKILL

    # Consistent: nothing half-done is ever returned, nothing is reported as a problem.
    committed = moment == "after_commit"
    assert store.lookup(key) == (plan if committed else None)
    assert [e.problem for e in store.list()] == ([None] if committed else [])
    # The next build succeeds (the dead child's lock went with it) and cleans up.
    result = store.put(key, write_plan, lock_timeout_s=10)
    assert result.built is not committed
    assert store.lookup(key) == plan and plan.read_bytes() == PLAN
    assert _temps(root) == []
    assert len(list(root.glob("*.plan"))) == 1 and len(list(root.glob(f"*{MANIFEST_SUFFIX}"))) == 1


# --------------------------------------------------------------------------- build while using
def _build_and_use(root: str, counter: str, reader_first: bool, start: Any, out: Any) -> None:
    """Child: optionally poll lookup() until the engine appears, then put() and read the plan."""
    store, key = EngineStore(root), make_key()
    errors: list[str] = []
    misses = 0

    def build(tmp: Path) -> dict[str, Any]:
        with open(counter, "a") as f:  # O_APPEND: one line per build, from any process
            f.write(f"{os.getpid()}\n")
        tmp.write_bytes(PLAN[:100])
        time.sleep(0.3)  # a slow build: readers poll meanwhile
        with open(tmp, "ab") as f:
            f.write(PLAN[100:])
        return {}

    start.wait()
    if reader_first:
        deadline = time.monotonic() + 30
        while True:
            try:
                found = store.lookup(key)
            except StoreError as exc:
                errors.append(f"lookup: {exc}")
                found = None
            if found is not None:
                if found.read_bytes() != PLAN:
                    errors.append("corrupt read")
                break
            misses += 1
            if time.monotonic() > deadline:
                errors.append("engine never appeared")
                break
            time.sleep(0.002)
    result = store.put(key, build, lock_timeout_s=30)
    if result.path.read_bytes() != PLAN:
        errors.append("corrupt plan after put")
    out.put((reader_first, result.built, misses, errors))


@pytest.mark.parametrize("round_", range(CONCURRENT_ROUNDS))
@pytest.mark.parametrize("n_procs", [2, 4])
def test_build_while_others_look_up(tmp_path, n_procs, round_):
    root, counter = tmp_path / "engines", tmp_path / "builds.txt"
    results = run_together(_build_and_use, [(str(root), str(counter), i % 2 == 1) for i in range(n_procs)])
    assert [e for *_, errors in results for e in errors] == []  # no corrupt or refused read
    assert len(counter.read_text().splitlines()) == 1  # one build in all
    assert sum(built for _, built, _, _ in results) == 1
    # The readers really overlapped the build (they polled and missed while it ran).
    assert sum(misses for reader, _, misses, _ in results if reader) > 0
    store = EngineStore(root)
    assert store.lookup(make_key()).read_bytes() == PLAN
    assert _temps(root) == [] and len(list(root.glob("*.plan"))) == 1


# --------------------------------------------------------------------------- swapped plan
def test_plan_swapped_for_another_valid_plan_is_refused(tmp_path):
    """A plan replaced by another complete, same-size plan (e.g. copied from another machine)
    has the wrong hash: refused on lookup, and put() rebuilds rather than trusting it."""
    store, key = EngineStore(tmp_path), make_key()
    path = store.put(key, write_plan).path
    foreign = bytes(reversed(PLAN))
    path.write_bytes(foreign)
    with pytest.raises(StoreError) as info:
        store.lookup(key)
    assert "corrupt" in str(info.value) and "\n" not in str(info.value)
    result = store.put(key, write_plan)
    assert result.built and "corrupt" in result.replaced and path.read_bytes() == PLAN
