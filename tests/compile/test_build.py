"""Engine builder: real TensorRT-RTX ahead-of-time builds on the CPU from real ONNX exports."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import onnx
import pytest
import torch

from pid_trt.compile.build import BuildOptions, build_engine
from pid_trt.compile.engine_pair import build_into_store, engine_key
from pid_trt.config import TINY, Precision
from pid_trt.errors import BackendUnavailableError, ConfigError, EngineBuildError
from pid_trt.stores.store import EngineStore
from pid_trt.trt_flavour import (
    DEFAULT_RTX_TARGETS,
    Flavour,
    TrtLogger,
    cuda_device_count,
    detect_flavour,
    is_importable,
    load_trt,
)

pytestmark = pytest.mark.requires("tensorrt_rtx")

RTX = Flavour.TENSORRT_RTX
DTYPES = {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}
ONNX_TYPES = {Precision.FP32: onnx.TensorProto.FLOAT, Precision.FP16: onnx.TensorProto.FLOAT16,
              Precision.BF16: onnx.TensorProto.BFLOAT16}  # fmt: skip
# First bytes of a serialized plan, per flavour (observed: TensorRT-RTX 1.x plans start "vtrt").
PLAN_MAGIC = {RTX: b"vtrt"}


def check_plan(plan_path: str | Path, flavour: Flavour | str = "auto") -> str:
    """What can be checked of a plan without running it, from its header only: with a CUDA GPU
    the runtime's verdict (``VALID`` / ``SUBOPTIMAL`` / ``INVALID``, where the flavour has
    ``get_engine_validity``); without one ``HEADER_OK`` when the header is there and starts with
    the flavour's magic, else ``INVALID``."""
    flavour = detect_flavour(flavour)
    trt = load_trt(flavour)
    runtime = trt.Runtime(TrtLogger(trt))
    size = int(getattr(runtime, "engine_header_size", 0) or 64)
    with open(plan_path, "rb") as f:
        header = f.read(size)
    if len(header) < size or not header.startswith(PLAN_MAGIC.get(flavour, b"")):
        return "INVALID"
    if cuda_device_count() == 0 or not hasattr(runtime, "get_engine_validity"):
        return "HEADER_OK"
    validity, _diagnostics = runtime.get_engine_validity(header)
    return str(validity.name)


class _RMSNorm(torch.nn.Module):
    """RMSNorm computed in fp32 whatever the input type (an FP32 island, docs/design.md §5)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)
        return y.to(x.dtype) * self.weight


class _Attention(torch.nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)
        self.qk_norm = _RMSNorm(dim // heads)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(self.qk_norm(q), self.qk_norm(k), v)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class _TinyBlock(torch.nn.Module):
    """Linear + RMSNorm + SDPA at head size 64 (MMDiT) then 72 (PiT), like PiD's two trunks."""

    def __init__(self) -> None:
        super().__init__()
        self.attn64 = _Attention(256, 4)
        self.proj = torch.nn.Linear(256, 288)
        self.attn72 = _Attention(288, 4)
        self.norm = _RMSNorm(288)

    def forward(self, x):
        h = x + self.attn64(x)
        h = self.proj(h)
        return self.norm(h + self.attn72(h))


def _export(path: Path, precision: Precision, dynamic_batch: bool = False) -> Path:
    torch.manual_seed(0)
    model = _TinyBlock().eval().to(DTYPES[precision])
    x = torch.randn(1, 64, 256, dtype=DTYPES[precision])
    dyn = {"x": {0: torch.export.Dim("batch", min=1, max=8)}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["y"], dynamo=True,
                          opset_version=23, dynamic_shapes=dyn, verbose=False)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def onnx_graphs(tmp_path_factory) -> dict[Precision, Path]:
    d = tmp_path_factory.mktemp("onnx")
    return {p: _export(d / f"block_{p.value}.onnx", p) for p in DTYPES}


@pytest.fixture(scope="module")
def built(onnx_graphs, tmp_path_factory):
    d = tmp_path_factory.mktemp("plans")
    reports = {}
    for p, path in onnx_graphs.items():
        # TensorRT-RTX 1.7 has no fused fp32 attention: the fp32 graph may decompose it.
        options = BuildOptions(precision=p, decomposable_attention=p is Precision.FP32)
        reports[p] = build_engine(path, d / f"block_{p.value}.plan", options, RTX)
        print(f"\n[build] {p.value}: {reports[p].build_seconds:.2f} s, plan {reports[p].plan_bytes} bytes")
    return reports


@pytest.mark.parametrize("precision", list(DTYPES))
def test_strongly_typed_build_per_precision(onnx_graphs, built, precision):
    graph = onnx.load(onnx_graphs[precision])
    assert graph.graph.input[0].type.tensor_type.elem_type == ONNX_TYPES[precision]
    assert "Attention" in {n.op_type for n in graph.graph.node}  # fused attention survives export
    report = built[precision]
    assert report.flavour is RTX and report.precision is precision
    assert report.compute_capabilities == DEFAULT_RTX_TARGETS
    assert not report.dynamic_batch and report.attention_layers == 2
    assert report.plan_path.stat().st_size == report.plan_bytes > 100_000
    assert report.build_seconds > 0
    assert check_plan(report.plan_path, RTX) == "HEADER_OK"


def test_plans_store_weights_in_the_graph_precision(tmp_path):
    # Strong typing: a weight-dominated graph's plan holds 4 bytes per weight in fp32 and 2 in
    # fp16 / bf16 (the attention block above adds fused-attention code to the half plans).
    torch.manual_seed(0)
    stack = torch.nn.Sequential(torch.nn.Linear(768, 768), torch.nn.Linear(768, 768))
    n_weights = sum(p.numel() for p in stack.parameters())
    sizes = {}
    for p, dtype in DTYPES.items():
        path = tmp_path / f"stack_{p.value}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(stack.to(dtype), (torch.randn(1, 16, 768, dtype=dtype),), path, dynamo=True,
                              opset_version=23, verbose=False)  # fmt: skip
        sizes[p] = build_engine(path, tmp_path / f"{p.value}.plan", BuildOptions(p), RTX).plan_bytes
    for half in (Precision.FP16, Precision.BF16):
        saved = sizes[Precision.FP32] - sizes[half]
        assert 0.95 * 2 * n_weights < saved < 1.05 * 2 * n_weights, (half, sizes)


def test_unfusable_fp32_attention_fails_with_a_hint(onnx_graphs, tmp_path):
    with pytest.raises(EngineBuildError, match="decomposable_attention=True") as info:
        build_engine(onnx_graphs[Precision.FP32], tmp_path / "x.plan", BuildOptions(), RTX)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x.plan").exists()


def test_truncated_plan_is_invalid(built, tmp_path):
    bad = tmp_path / "bad.plan"
    bad.write_bytes(b"ftrt" + built[Precision.FP32].plan_path.read_bytes()[4:40])
    assert check_plan(bad, RTX) == "INVALID"


def test_dynamic_batch_gets_a_profile(tmp_path):
    path = _export(tmp_path / "dyn.onnx", Precision.FP16, dynamic_batch=True)
    report = build_engine(
        path, tmp_path / "dyn.plan", BuildOptions(Precision.FP16, batch_range=(1, 2, 4)), RTX
    )
    assert report.dynamic_batch and report.plan_bytes > 0


def test_targets_and_options(onnx_graphs, tmp_path):
    path = onnx_graphs[Precision.FP16]
    one = build_engine(path, tmp_path / "a.plan", BuildOptions(Precision.FP16, compute_capabilities=("8.9",),
                       optimization_level=1, workspace_bytes=256 << 20), RTX)  # fmt: skip
    assert one.compute_capabilities == ("8.9",)
    with pytest.raises(ConfigError, match="9.0"):  # Hopper is not an RTX target
        build_engine(path, tmp_path / "b.plan", BuildOptions(compute_capabilities=("9.0",)), RTX)
    for bad in ({"optimization_level": 7}, {"batch_range": (2, 1, 4)}, {"workspace_bytes": 0}):
        with pytest.raises(ConfigError):
            BuildOptions(**bad)


def test_parser_error_names_node_and_op(tmp_path):
    h = onnx.helper
    node = h.make_node("Col2Im", ["x", "image_shape", "block_shape"], ["y"], name="fold_0")
    graph = h.make_graph(
        [node], "g",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 12, 16])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        initializer=[h.make_tensor("image_shape", onnx.TensorProto.INT64, [2], [8, 8]),
                     h.make_tensor("block_shape", onnx.TensorProto.INT64, [2], [2, 2])],
    )  # fmt: skip
    path = tmp_path / "col2im.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]), path)
    with pytest.raises(EngineBuildError, match="fold_0.*Col2Im") as info:
        build_engine(path, tmp_path / "x.plan", BuildOptions(), RTX)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x.plan").exists()


def test_flavour_detection():
    assert detect_flavour("tensorrt-rtx") is RTX
    if not is_importable(Flavour.TENSORRT):
        assert detect_flavour("auto") is RTX
        with pytest.raises(BackendUnavailableError, match=r"pip install 'pid-trt\[tensorrt\]'"):
            detect_flavour("tensorrt")
    with pytest.raises(ConfigError, match="expected auto"):
        detect_flavour("tensorrt-llm")


def test_import_needs_no_tensorrt():
    code = ("import sys, pid_trt.compile.build, pid_trt.stores.store; "
            "print(sorted(m for m in sys.modules if m.startswith(('tensorrt', 'torch', 'onnx'))))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_store_build_then_cache_hit(onnx_graphs, tmp_path):
    store = EngineStore(tmp_path / "engines")
    options = BuildOptions(Precision.BF16)
    path = onnx_graphs[Precision.BF16]
    key = engine_key(checkpoint_sha256="ab" * 32, net_config=TINY, height=256, width=256,
                              onnx_path=path, options=options, flavour=RTX)  # fmt: skip
    first = build_into_store(store, key, path, options)
    assert first.built and first.manifest["build"]["plan_bytes"] == first.path.stat().st_size
    assert first.manifest["key"]["precision"] == "bf16" and first.manifest["key"]["flavour"] == "tensorrt-rtx"
    again = build_into_store(store, key, path, options)
    assert not again.built and again.path == first.path
    assert store.lookup(key) == first.path
    other = engine_key(checkpoint_sha256="ab" * 32, net_config=TINY, height=256, width=256,
                                onnx_path=path, options=BuildOptions(Precision.BF16, optimization_level=2),
                                flavour=RTX)  # fmt: skip
    assert other.digest() != key.digest() and store.lookup(other) is None
