"""Shared test fixtures: where the golden vectors are, tiny configs, temp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def golden_dir() -> Path | None:
    """The folder of the official network's golden vectors, or None when absent.

    Looked up in $PIDTRT_GOLDEN_DIR, then ``../shared/golden`` and ``shared/golden``
    beside / inside the repository.
    """
    candidates = []
    if os.environ.get("PIDTRT_GOLDEN_DIR"):
        candidates.append(Path(os.environ["PIDTRT_GOLDEN_DIR"]))
    candidates += [REPO.parent / "shared" / "golden", REPO / "shared" / "golden"]
    for c in candidates:
        if c.is_dir() and any(c.glob("*.safetensors")):
            return c
    return None


def golden_files() -> list[Path]:
    d = golden_dir()
    return sorted(d.glob("*.safetensors")) if d else []


def inventory_path() -> Path | None:
    """The released checkpoints' key/shape inventory (``pid/checkpoint_inventory.json``)."""
    for c in (REPO.parent / "shared" / "pid", REPO / "shared" / "pid"):
        p = c / "checkpoint_inventory.json"
        if p.is_file():
            return p
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU with CUDA; skipped without one")
    config.addinivalue_line("markers", "slow: takes more than ~30 s on a 2-core CPU")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (CUDA not available)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


GOLDEN = golden_files()
needs_golden = pytest.mark.skipif(not GOLDEN, reason="golden vectors (shared/golden) not found")
