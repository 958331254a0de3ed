"""Engine store: content addressing, validation on lookup, locking, atomic commit, crashes.

Real files and real processes; the "build" writes bytes so that these tests need no
TensorRT (the real TensorRT-RTX path through the store is in tests/compile/test_build.py).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pid_trt.config import TINY, Precision
from pid_trt.errors import ConfigError, StoreError
from pid_trt.stores.artifacts import MANIFEST_SUFFIX, TEMP_PREFIX, ArtifactStore
from pid_trt.stores.keys import EngineKey
from pid_trt.stores.store import EngineStore
from pid_trt.trt_flavour import Flavour

PLAN = b"vtrt" + bytes(range(256)) * 64


def make_key(**changes: Any) -> EngineKey:
    key = EngineKey(
        checkpoint_sha256="c" * 64,
        net_config=TINY.to_json(),
        height=512,
        width=768,
        batch_range=(1, 1, 2),
        precision=Precision.BF16,
        flavour=Flavour.TENSORRT_RTX,
        trt_version="1.7.1.116",
        compute_capabilities=("8.6", "8.9", "12.0"),
        onnx_sha256="0" * 64,
        build_options='{"optimization_level":3}',
    )
    return replace(key, **changes)


def write_plan(tmp: Path) -> dict[str, Any]:
    tmp.write_bytes(PLAN)
    return {"note": "test"}


def _counting_build(root: str, counter: str, delay_s: float):
    def build(tmp: Path) -> dict[str, Any]:
        with open(counter, "a") as f:  # O_APPEND: one line per build, from any process
            f.write(f"{os.getpid()}\n")
        time.sleep(delay_s)
        tmp.write_bytes(PLAN)
        return {}

    return build


def _put_worker(root: str, counter: str, delay_s: float, start: Any, out: Any) -> None:
    start.wait()
    result = EngineStore(root).put(make_key(), _counting_build(root, counter, delay_s))
    out.put((str(result.path), result.built, result.manifest["sha256"]))


def _slow_worker(root: str) -> None:
    def build(tmp: Path) -> dict[str, Any]:
        tmp.write_bytes(PLAN[:100])  # half-written plan, then "hang"
        time.sleep(60)
        return {}

    EngineStore(root).put(make_key(), build)


def _edit_manifest(store: EngineStore, key: EngineKey, **changes: Any) -> Path:
    path = store.manifest_path_for(key)
    data = json.loads(path.read_text())
    for name, value in changes.items():
        if name.startswith("key."):
            data["key"][name[4:]] = value
        else:
            data[name] = value
    path.write_text(json.dumps(data))
    return path


# --------------------------------------------------------------------------- keys
def test_key_digest_covers_every_field():
    base = make_key()
    assert base.digest() == make_key().digest() and len(base.digest()) == 64
    variants = [
        {"checkpoint_sha256": "d" * 64}, {"net_config": TINY.to_json().replace('"hidden_size":64', '"hidden_size":128')},
        {"height": 1024}, {"width": 1024}, {"batch_range": (1, 2, 4)}, {"precision": Precision.FP16},
        {"flavour": Flavour.TENSORRT}, {"trt_version": "1.8.0.1"}, {"compute_capabilities": ("8.9",)},
        {"onnx_sha256": "1" * 64}, {"build_options": '{"optimization_level":4}'},
    ]  # fmt: skip
    digests = {make_key(**v).digest() for v in variants}
    assert len(digests) == len(variants) and base.digest() not in digests
    with pytest.raises(ConfigError, match="sha256"):
        make_key(checkpoint_sha256="not-a-hash")


def test_put_lookup_manifest(tmp_path):
    store = EngineStore(tmp_path / "engines")
    key = make_key()
    assert store.lookup(key) is None
    result = store.put(key, write_plan)
    assert result.built and result.path.read_bytes() == PLAN
    assert (
        result.path.name.startswith("768x512-b1-2-bf16-tensorrt-rtx1.7.1-") and result.path.suffix == ".plan"
    )
    manifest = json.loads(store.manifest_path_for(key).read_text())
    assert manifest["digest"] == key.digest() and manifest["path"] == result.path.name
    assert manifest["size_bytes"] == len(PLAN) and manifest["key"]["precision"] == "bf16"
    assert manifest["key"]["flavour"] == "tensorrt-rtx" and manifest["key"]["trt_version"] == "1.7.1.116"
    assert manifest["build"] == {"note": "test"} and manifest["build_seconds"] >= 0 and manifest["created"]
    assert store.lookup(key) == result.path
    again = store.put(key, lambda tmp: pytest.fail("must not rebuild"))
    assert not again.built and again.path == result.path
    assert [e.digest for e in store.list()] == [key.digest()] and store.list()[0].problem is None


def test_stale_engine_refused_then_rebuilt(tmp_path):
    store = EngineStore(tmp_path)
    key = make_key()
    store.put(key, write_plan)
    _edit_manifest(store, key, **{"key.onnx_sha256": "9" * 64})
    with pytest.raises(StoreError, match="stale or foreign.*onnx_sha256"):
        store.lookup(key)
    rebuilt = store.put(key, write_plan)
    assert rebuilt.built and "onnx_sha256" in rebuilt.replaced
    assert store.lookup(key) == rebuilt.path


def test_foreign_flavour_or_version_refused(tmp_path):
    store = EngineStore(tmp_path)
    key = make_key()
    # An engine of the same bucket built by another flavour / version is another key: never picked up.
    foreign = make_key(flavour=Flavour.TENSORRT, trt_version="10.13.0.35", compute_capabilities=("9.0",))
    store.put(foreign, write_plan)
    assert store.lookup(key) is None
    # ... and one copied under this key's name is refused, naming what differs.
    store.put(key, write_plan)
    _edit_manifest(store, key, **{"key.trt_version": "1.6.0.1"})
    with pytest.raises(StoreError, match=r"trt_version: built with '1.6.0.1', expected '1.7.1.116'"):
        store.lookup(key)
    _edit_manifest(store, key, **{"key.trt_version": "1.7.1.116", "key.flavour": "tensorrt"})
    with pytest.raises(StoreError, match="flavour"):
        store.lookup(key)


def test_corrupt_engine_refused(tmp_path):
    store = EngineStore(tmp_path)
    key = make_key()
    path = store.put(key, write_plan).path
    path.write_bytes(PLAN[:-1] + b"\x00")  # same size, other bytes
    with pytest.raises(StoreError, match="corrupt engine.*sha256"):
        store.lookup(key)
    assert store.lookup(key, verify_hash=False) == path  # size-only check cannot see it
    path.write_bytes(PLAN[:10])
    with pytest.raises(StoreError, match="corrupt"):
        store.lookup(key, verify_hash=False)
    assert store.put(key, write_plan).built and store.lookup(key) == path


@pytest.mark.parametrize("bad", ["../outside.plan", "/etc/passwd", "..", "sub/x.plan", ""])
def test_manifest_naming_outside_path_refused(tmp_path, bad):
    root = tmp_path / "engines"
    store = EngineStore(root)
    key = make_key()
    store.put(key, write_plan)
    (tmp_path / "outside.plan").write_bytes(PLAN)
    _edit_manifest(store, key, path=bad)
    with pytest.raises(StoreError, match="outside the store"):
        store.lookup(key)
    assert store.list()[0].problem and "outside the store" in store.list()[0].problem
    store.remove("all")
    assert (tmp_path / "outside.plan").exists()  # never deleted through a manifest's path


def test_symlink_out_of_store_refused(tmp_path):
    store = EngineStore(tmp_path / "engines")
    key = make_key()
    path = store.put(key, write_plan).path
    (tmp_path / "elsewhere.plan").write_bytes(PLAN)
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.plan")
    with pytest.raises(StoreError, match="outside the store"):
        store.lookup(key)


def test_artifact_without_manifest_is_not_committed(tmp_path):
    store = EngineStore(tmp_path)
    key = make_key()
    store.path_for(key).write_bytes(PLAN)  # e.g. crash between rename and manifest
    assert store.lookup(key) is None and store.list() == []
    assert store.put(key, write_plan).built


def test_failed_build_leaves_nothing(tmp_path):
    store = EngineStore(tmp_path)

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise RuntimeError("builder exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        store.put(make_key(), broken)
    assert [p.name for p in tmp_path.iterdir()] == [".locks"]
    with pytest.raises(StoreError, match="wrote nothing"):
        store.put(make_key(), lambda tmp: None)


def test_list_and_remove(tmp_path):
    store = EngineStore(tmp_path)
    a, b = make_key(), make_key(height=1024)
    store.put(a, write_plan)
    store.put(b, write_plan)
    assert sorted(e.digest for e in store.list()) == sorted([a.digest(), b.digest()])
    with pytest.raises(StoreError, match="no entries match"):
        store.remove("abcdef12")
    with pytest.raises(StoreError, match="6\\+ hex"):
        store.remove("zz")
    assert store.remove(a.digest()[:10]) == [store.path_for(a).name]
    assert store.lookup(a) is None and store.lookup(b) is not None
    (tmp_path / f"{TEMP_PREFIX}junk").write_bytes(b"x")
    assert store.remove("all") == [store.path_for(b).name]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks"]


def run_together(target: Any, args: list[tuple]) -> list[Any]:
    """Run ``target(*a, start, out)`` for each ``a`` of ``args`` in forked processes released at
    once by the ``start`` event; returns what each put on the ``out`` queue (in arrival order)
    after checking that every process exited 0."""
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, start, out), daemon=True) for a in args]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


@pytest.mark.parametrize("n_procs", [2, 4])
def test_concurrent_puts_build_once(tmp_path, n_procs):
    root, counter = tmp_path / "engines", tmp_path / "builds.txt"
    results = run_together(_put_worker, [(str(root), str(counter), 0.5)] * n_procs)
    assert len(counter.read_text().splitlines()) == 1  # the build ran once
    assert sum(built for _, built, _ in results) == 1
    assert len({(path, sha) for path, _, sha in results}) == 1
    store = EngineStore(root)
    assert store.lookup(make_key()) == Path(results[0][0])
    assert len(list(root.glob("*.plan"))) == 1 and len(list(root.glob(f"*{MANIFEST_SUFFIX}"))) == 1


def test_sigkill_mid_build_leaves_no_manifest(tmp_path):
    root = tmp_path / "engines"
    store = EngineStore(root)
    child = multiprocessing.get_context("fork").Process(target=_slow_worker, args=(str(root),))
    child.start()
    deadline = time.monotonic() + 30
    while not list(root.glob(f"{TEMP_PREFIX}*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(root.glob(f"{TEMP_PREFIX}*")), "the child never started writing"
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=10)
    assert child.exitcode == -signal.SIGKILL
    assert not store.manifest_path_for(make_key()).exists() and store.lookup(make_key()) is None
    result = store.put(make_key(), write_plan, lock_timeout_s=10)  # the dead child's lock is gone
    assert result.built and store.lookup(make_key()) == result.path
    assert not list(root.glob(f"{TEMP_PREFIX}*"))  # its half-written temp file was cleaned up


def test_lock_timeout(tmp_path):
    store = EngineStore(tmp_path)
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()

    def hold() -> None:
        def build(tmp: Path) -> None:
            started.set()
            time.sleep(3)
            tmp.write_bytes(PLAN)

        EngineStore(tmp_path).put(make_key(), build)

    child = ctx.Process(target=hold)
    child.start()
    assert started.wait(20)
    with pytest.raises(StoreError, match="still held"):
        store.put(make_key(), write_plan, lock_timeout_s=0.3)
    child.join(timeout=20)
    assert not store.put(make_key(), write_plan).built


# --------------------------------------------------------------------------- reuse for ONNX
@dataclass(frozen=True)
class _OnnxKey:
    """How the ONNX export cache can key its artifacts: a folder (graph + external data)."""

    kind: ClassVar[str] = "onnx"
    suffix: ClassVar[str] = ""
    checkpoint_sha256: str
    bucket: str

    def fields(self) -> dict[str, Any]:
        return {"checkpoint_sha256": self.checkpoint_sha256, "bucket": self.bucket}

    def label(self) -> str:
        return f"onnx-{self.bucket}"


def test_folder_artifacts_for_onnx(tmp_path):
    store = ArtifactStore(tmp_path / "export", kind="onnx")
    key = _OnnxKey("c" * 64, "512x512")

    def export(tmp: Path) -> dict[str, Any]:
        tmp.mkdir()
        (tmp / "model.onnx").write_bytes(b"graph")
        (tmp / "model.onnx.data").write_bytes(b"weights" * 100)
        return {"opset": 23}

    result = store.put(key, export)
    assert result.path.is_dir() and (result.path / "model.onnx.data").exists()
    assert result.manifest["size_bytes"] == 5 + 700 and store.lookup(key) == result.path
    (result.path / "model.onnx.data").write_bytes(b"tampered" * 100)
    with pytest.raises(StoreError, match="corrupt onnx"):
        store.lookup(key)
    with pytest.raises(ConfigError, match="kind 'engine'"):
        store.lookup(make_key())
