"""The suite's ground truth is in the repository and intact: every golden file of
tests/golden/SHA256SUMS with its hash, the checkpoint inventory as package data, and
$PIDTRT_GOLDEN_DIR (when set) a folder of extra golden files. Missing data fails here,
naming the path, as well as in every test that reads it."""

from __future__ import annotations

import pytest

from pid_trt.config import all_presets
from pid_trt.verify.inventory import experiments, inventory_file, load_inventory
from tests.conftest import (
    GOLDEN_DIR,
    GOLDEN_ENV,
    GOLDEN_MANIFEST,
    extra_golden_dir,
    golden_manifest,
    sha256_file,
)


@pytest.mark.parametrize("name", sorted(golden_manifest()))
def test_golden_file_is_present_and_intact(name):
    path = GOLDEN_DIR / name
    assert path.is_file(), f"golden file {path} is missing (listed in {GOLDEN_MANIFEST}; restore it from git)"
    digest = sha256_file(path)
    assert digest == golden_manifest()[name], (
        f"golden file {path} does not match its SHA-256 in {GOLDEN_MANIFEST} "
        f"(a git-lfs pointer or a modified file?): {digest}"
    )


def test_golden_readme_is_present():
    assert (GOLDEN_DIR / "README.md").is_file(), f"{GOLDEN_DIR / 'README.md'} is missing"


def test_extra_golden_dir_when_set_holds_golden_files():
    extra = extra_golden_dir()
    if extra is None:
        return  # nothing extra to check: the repository's cases are the ground truth
    assert extra.is_dir(), f"${GOLDEN_ENV}={extra} is not a folder"
    assert any(extra.glob("*.safetensors")), f"${GOLDEN_ENV}={extra} holds no *.safetensors golden files"


def test_inventory_is_package_data_and_covers_every_release():
    assert inventory_file().is_file(), f"checkpoint inventory {inventory_file()} is missing"
    released = {p.experiment for p in all_presets() if p.released}
    assert sorted(released - set(experiments())) == [], "released presets missing from the inventory"
    for name, entry in load_inventory().items():
        assert entry["num_keys"] == len(entry["keys"]), name
