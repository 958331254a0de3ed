"""pid_trt.atomic: a file is replaced whole or not at all, and no temp file is left behind."""

from __future__ import annotations

import os

import pytest

from pid_trt.atomic import TEMP_PREFIX, atomic_write, atomic_write_bytes
from tests.io.helpers import no_temp_files


def test_atomic_write_replaces_the_target_only_when_the_block_ends(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(TEMP_PREFIX) and not tmp.exists()
        tmp.write_bytes(b"two")
        assert target.read_bytes() == b"one"  # not visible before the block ends
    assert target.read_bytes() == b"two" and no_temp_files(tmp_path)


def test_atomic_write_failure_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and no_temp_files(tmp_path)


def test_atomic_write_with_nothing_written_raises_and_leaves_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_write(tmp_path / "f.bin"):
        pass
    assert not any(tmp_path.iterdir())


def test_atomic_write_rename_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def failing_replace(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and no_temp_files(tmp_path)


def test_atomic_write_into_a_missing_folder_names_the_folder(tmp_path):
    target = tmp_path / "missing" / "out.bin"
    with pytest.raises(FileNotFoundError) as info, atomic_write(target):
        raise AssertionError("the body must not run when the folder is missing")
    assert info.value.filename == str(tmp_path / "missing")
    assert "out.bin" in info.value.strerror
    assert not (tmp_path / "missing").exists()
