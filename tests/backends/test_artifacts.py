"""What a backend says of itself instead of being asked by name: its class facts and the cost of
its artifacts (:meth:`Backend.make_artifacts`, :meth:`Backend.artifacts`), on a real ONNX export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pid_trt.backends.base import GraphKind
from pid_trt.backends.factory import BackendRequest, create_backend
from pid_trt.backends.registry import BACKENDS, backend_class
from pid_trt.options import NetOptions, RuntimeOptions
from tests.conftest import require

_MIB = float(2**20)


def test_the_facts_front_ends_switch_on() -> None:
    facts = {
        name: (cls.graph, cls.compiles_on_first_decode, cls.loads_weights_at_start, cls.makes_artifacts)
        for name in BACKENDS
        for cls in [backend_class(name)]
    }
    assert facts == {
        "torch": (GraphKind.TORCH, False, True, False),
        "torch-compile": (GraphKind.TORCH, True, True, False),
        "onnxruntime": (GraphKind.ONNX, False, False, True),
        "tensorrt": (GraphKind.PLAN, False, False, False),
    }


def test_torch_has_no_artifacts(tmp_path: Path) -> None:
    spec = NetOptions(backbone="tiny", random_weights=True).resolve()
    runtime = RuntimeOptions("torch", device="cpu").resolve()
    request = BackendRequest(spec, runtime, 64, 64, 1)
    assert runtime.backend.make_artifacts(request).engine_mb is None
    with create_backend(request) as backend:
        arts = backend.artifacts()
    assert (arts.engine_mb, arts.build_s, arts.device_mb, arts.threads) == (None, None, None, None)


# slow: a real ONNX export (~11 s); the class facts above stay quick
@pytest.mark.slow
def test_onnxruntime_makes_its_export_once_and_reports_it(tmp_path: Path) -> None:
    require("onnxruntime")
    spec = NetOptions(backbone="tiny", random_weights=True).resolve()
    runtime = RuntimeOptions("onnxruntime", "fp32", "cpu", export_dir=tmp_path / "export").resolve()
    request = BackendRequest(spec, runtime, 64, 64, 1)
    made = runtime.backend.make_artifacts(request)
    files = sum(p.stat().st_size for p in (tmp_path / "export").rglob("*") if p.is_file())
    assert made.build_s is not None and made.build_s > 0
    assert made.engine_mb is not None and 0 < made.engine_mb * _MIB <= files
    again = runtime.backend.make_artifacts(request)  # from the store now
    assert again.build_s is None and again.engine_mb == made.engine_mb
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with create_backend(request) as backend:
            arts = backend.artifacts()
    finally:
        torch.set_num_threads(threads)
    assert arts.engine_mb == pytest.approx(made.engine_mb) and arts.threads == 1
    assert arts.build_s is None and arts.device_mb is None
