"""The persistent caption store (pid_trt.caption_store): keyed by the encoder's content, not
its path; bounded, oldest out; a torn or vanished file is a miss; two processes writing it at
once leave every file readable; the provider reads it before loading the encoder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pid_trt.caption_store import CAPTION_STORE_ENV, CaptionStore, default_store_dir, encoder_digest
from pid_trt.errors import ConfigError


@pytest.fixture(scope="module")
def gemma(tmp_path_factory) -> Path:
    from tests.text_helpers import make_tiny_gemma

    return make_tiny_gemma(tmp_path_factory.mktemp("gemma"))


def test_identity_is_the_content_not_the_path(gemma: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(gemma, tmp_path / "elsewhere")
    assert encoder_digest(copy) == encoder_digest(gemma)
    os.utime(copy / "tokenizer.json", (1, 1))  # same content, another time: the same encoder
    assert encoder_digest(copy) == encoder_digest(gemma)
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # one byte of the last weights: another encoder
    weights.write_bytes(bytes(data))
    assert encoder_digest(copy) != encoder_digest(gemma)


def test_keys_round_trip_and_miss(tmp_path: Path) -> None:
    store = CaptionStore(tmp_path / "s")
    emb = torch.randn(300, 32)
    assert store.get("enc", "fp32", "a fox") is None
    path = store.put("enc", "fp32", "a fox", emb)
    assert path is not None and path.parent == store.root
    assert torch.equal(store.get("enc", "fp32", "a fox"), emb)
    for other in (("enc2", "fp32", "a fox"), ("enc", "bf16", "a fox"), ("enc", "fp32", "a fox ")):
        assert store.get(*other) is None
    store.put("enc", "fp32", "", emb * 2)
    found = store.any_null(32)
    assert found is not None and torch.equal(found[0], emb * 2) and found[1].name.startswith("null-")
    assert store.any_null(2304) is None


def test_bounded_oldest_out(tmp_path: Path) -> None:
    one = 300 * 32 * 4  # bytes of one embedding's tensor (+ a small header)
    store = CaptionStore(tmp_path / "s", max_mb=3.5 * one / 1e6)
    rows = {f"p{i}": torch.full((300, 32), float(i)) for i in range(5)}
    for i, (prompt, emb) in enumerate(rows.items()):
        store.put("enc", "fp32", prompt, emb)
        path = store.path("enc", "fp32", prompt)
        os.utime(path, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))  # strictly increasing times
        store.trim()
    kept = [p for p in rows if store.get("enc", "fp32", p) is not None]
    assert kept == ["p2", "p3", "p4"] and store.size_bytes() <= store.max_mb * 1e6


def test_torn_and_foreign_files_are_misses(tmp_path: Path) -> None:
    store = CaptionStore(tmp_path / "s")
    path = store.put("enc", "fp32", "x", torch.randn(300, 32))
    assert path is not None
    path.write_bytes(path.read_bytes()[:100])  # a torn file
    assert store.get("enc", "fp32", "x") is None
    path.unlink()
    assert store.get("enc", "fp32", "x") is None


def test_bad_size_and_default_folder(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="expected a number > 0"):
        CaptionStore(tmp_path, max_mb=0)
    monkeypatch.setenv(CAPTION_STORE_ENV, str(tmp_path / "mine"))
    assert default_store_dir() == tmp_path / "mine"
    monkeypatch.setenv(CAPTION_STORE_ENV, "off")
    assert default_store_dir() is None and CaptionStore.default() is None
    monkeypatch.delenv(CAPTION_STORE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_store_dir() == tmp_path / "xdg" / "pid-trt" / "captions"


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from pid_trt.caption_store import CaptionStore
    store = CaptionStore(sys.argv[1], max_mb=float(sys.argv[2]))
    for round in range(3):
        for i in range(40):
            prompt = f"prompt {i}"
            store.put("enc", "fp32", prompt, torch.full((300, 32), float(i)))
            got = store.get("enc", "fp32", prompt)
            assert got is None or torch.equal(got, torch.full((300, 32), float(i))), prompt
    print("ok")
    """
)


def test_two_processes_writing_at_once_leave_it_readable(tmp_path: Path) -> None:
    """Two real processes put the same 40 prompts three times each, with a bound that keeps
    ~25 of them (so they also evict each other's files): both finish, every file left is a
    whole store file with the right values, and no temp file is left."""
    root = tmp_path / "store"
    max_mb = 25 * 300 * 32 * 4 / 1e6
    cmd = [sys.executable, "-c", _WRITER, str(root), str(max_mb)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0 and out.strip() == "ok", err
    store = CaptionStore(root, max_mb=max_mb)
    files = sorted(root.iterdir())
    assert files and all(p.name.startswith("cap-") for p in files), [p.name for p in files]
    present = 0
    for i in range(40):
        got = store.get("enc", "fp32", f"prompt {i}")
        if got is not None:
            present += 1
            assert torch.equal(got, torch.full((300, 32), float(i)))
    assert present == len(files) and store.size_bytes() <= max_mb * 1e6 + 2 * 40_000


def test_provider_reads_the_store_before_the_encoder(gemma: Path, tmp_path: Path) -> None:
    """A second provider (a new process's) answers a stored prompt without loading the encoder:
    its encoder source is then made unloadable (no transformers), and still it answers."""
    from pid_trt.captions import CaptionProvider

    store = CaptionStore(tmp_path / "s")
    first = CaptionProvider(gemma, max_entries=4, store=store)
    emb = first.encode(["a red fox", ""])
    first.free()
    second = CaptionProvider(gemma, max_entries=4, store=store)
    saved = sys.modules.get("transformers")
    sys.modules["transformers"] = None  # type: ignore[assignment] - `import transformers` now fails
    try:
        again, ran = second.encode_traced(["", "a red fox"])
        with pytest.raises(Exception, match="transformers"):
            second.encode(["blue house"])
    finally:
        if saved is not None:
            sys.modules["transformers"] = saved
        else:
            del sys.modules["transformers"]
    assert not ran and second.store_hits == 2 and second.encoder_runs == 0
    assert torch.equal(again[0], emb[1]) and torch.equal(again[1], emb[0])
