"""ONNX export: graph checks (no float64, no Col2Im/Im2Col, fused Attention, bounded
initializers, fp32 islands in fp16/bf16 graphs), external data loading through onnx.checker,
ONNX Runtime and TensorRT-RTX's parser, and the export cache."""

from __future__ import annotations

import dataclasses

import onnx
import pytest
from onnx import TensorProto, helper

from pid_trt.buckets import Bucket, latent_shape
from pid_trt.compile.export import export_onnx
from pid_trt.compile.onnx_graph import AttentionForm, check_model_by_path, inspect_graph, trt_parse
from pid_trt.config import TINY, Precision, get_preset
from pid_trt.errors import BackendUnavailableError, ConfigError
from pid_trt.model import PidNet, random_init
from pid_trt.stores.exports import find_export
from pid_trt.stores.keys import EXPORTER_REVISION, ExportKey, weights_id
from tests.conftest import GOLDEN
from tests.export_helpers import golden_export

#: Head sizes 64 (MMDiT) and 72 (PiT) as in the released nets, at toy width.
HEADS_64_72 = dataclasses.replace(
    TINY, hidden_size=128, num_groups=2, pixel_attn_hidden_size=144, pixel_num_groups=2
)
#: An initializer that grows with H*W would pass this at 64x64 only if it were tiny anyway;
#: the bound is the largest weight matrix of the tiny nets (pixel adaLN, 3 MiB) with margin.
MAX_INITIALIZER_BYTES = 8 << 20
needs_rtx = pytest.mark.requires("tensorrt_rtx")


@pytest.fixture(scope="session")
def export_root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "onnx-export"


@pytest.fixture(scope="module")
def heads_bf16(export_root):
    model = random_init(PidNet(HEADS_64_72), seed=3).eval()
    key = ExportKey.create(HEADS_64_72, weights_id(random_seed=3), Bucket(64, 64), "bf16", 1)
    return export_onnx(model, key, export_root)


def _graph_problems(path) -> list[str]:
    rep = inspect_graph(path)
    problems = [f"float64: {rep.float64}"] if rep.float64 else []
    problems += [f"{op} present" for op in ("Col2Im", "Im2Col") if rep.ops.get(op)]
    if rep.largest_initializer[1] > MAX_INITIALIZER_BYTES:
        problems.append(f"initializer {rep.largest_initializer}")
    return problems


# ------------------------------------------------------------------ the checkers themselves
def _tiny_model(path, nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    onnx.save(model, str(path))
    return path


def test_float64_checker_finds_casts_and_tensors(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [
        helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["d"], ["y"], to=TensorProto.FLOAT),
    ]
    rep = inspect_graph(_tiny_model(tmp_path / "f64.onnx", nodes, [x], [y]))
    assert rep.float64 and any("Cast" in s for s in rep.float64) and "d" in rep.float64
    clean = [helper.make_node("Relu", ["x"], ["y"])]
    assert inspect_graph(_tiny_model(tmp_path / "ok.onnx", clean, [x], [y])).float64 == ()


def test_checker_reports_col2im_and_big_initializers(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    big = helper.make_tensor("w", TensorProto.FLOAT, [3 << 20], [0.0] * (3 << 20))
    nodes = [helper.make_node("Col2Im", ["x", "w", "w"], ["y"])]
    problems = _graph_problems(_tiny_model(tmp_path / "c.onnx", nodes, [x], [y], [big]))
    assert any("Col2Im" in p for p in problems) and any("initializer" in p for p in problems)


# ------------------------------------------------------------------ keys and shapes
def test_latent_shape_is_the_ceiling():
    flux = get_preset("flux").config
    assert latent_shape(flux, Bucket(2160, 3840)) == (68, 120)  # 2160 / 32 = 67.5
    assert latent_shape(flux, Bucket(2048, 2048)) == (64, 64)


def test_key_refuses_bad_requests():
    with pytest.raises(ConfigError):
        ExportKey.create(TINY, "random:0", Bucket(64, 64), "int8", 1)
    with pytest.raises(ConfigError):
        ExportKey.create(TINY, "random:0", Bucket(64, 64), "fp32", 0)
    with pytest.raises(ConfigError):
        # 48 px is a valid bucket edge (multiple of 16) but not a whole number of 32-px patches
        ExportKey.create(dataclasses.replace(TINY, patch_size=32), "random:0", Bucket(64, 48), "fp32", 1)
    with pytest.raises(ConfigError):
        ExportKey.create(TINY, "random:0", Bucket(64, 64), "fp32", 1, opset=18)
    a = ExportKey.create(TINY, "random:0", Bucket(64, 64), "fp32", 1)
    assert a.digest() != ExportKey.create(TINY, "random:1", Bucket(64, 64), "fp32", 1).digest()
    assert a.digest() != ExportKey.create(TINY, "random:0", Bucket(64, 64), "fp16", 1).digest()


# ------------------------------------------------------------------ real exports
@pytest.mark.slow  # exports every tiny variant, 52 s on 2 cores
def test_fp32_graphs_are_clean_and_load_everywhere(export_root):
    import onnxruntime as ort

    res, config, _ = golden_export(GOLDEN[0], "fp32", export_root)
    assert {p.name for p in res.folder.iterdir()} == {
        "prepare.onnx",
        "prepare.onnx.data",
        "step.onnx",
        "step.onnx.data",
    }
    for path in (res.prepare, res.step):
        assert _graph_problems(path) == []
        check_model_by_path(path)
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    step = inspect_graph(res.step)
    assert step.attention is AttentionForm.FUSED
    assert step.attention_nodes == config.patch_depth + config.pixel_depth
    assert not step.ops.get("Softmax")
    manifest = res.manifest
    assert manifest["key"]["precision"] == "fp32" and manifest["key"]["opset"] == 23
    assert set(manifest["key"]["versions"]) == {"torch", "onnx", "onnxscript"}
    assert manifest["key"]["exporter_revision"] == EXPORTER_REVISION
    assert set(manifest["build"]["files"]) == {
        "prepare.onnx",
        "prepare.onnx.data",
        "step.onnx",
        "step.onnx.data",
    }


@pytest.mark.slow  # exports a golden net (~15 s); the quick tier reuses an export through the CLI (tests/backends/test_ort_parity.py::test_cli_export_then_decode_matches_golden)
def test_cached_export_is_reused_only_when_the_key_matches(export_root):
    res, config, _ = golden_export(GOLDEN[0], "fp32", export_root)
    again = find_export(res.key, export_root)
    assert again is not None and again.folder == res.folder and not again.built
    other = dataclasses.replace(res.key, batch=res.key.batch + 1)
    assert find_export(other, export_root) is None
    served = export_onnx(PidNet(config), res.key, export_root)  # weights irrelevant: cache hit
    assert not served.built and served.folder == res.folder


@needs_rtx
@pytest.mark.slow  # the same golden fp32 export, parsed by TensorRT-RTX; the quick tier parses the bf16 graphs below
def test_trt_rtx_parses_fp32_graphs(export_root):
    res, config, _ = golden_export(GOLDEN[0], "fp32", export_root)
    assert trt_parse(res.prepare).layers > 0
    rep = trt_parse(res.step)
    assert rep.attention_layers in (0, config.patch_depth + config.pixel_depth)


# slow: a bf16 export with 64 / 72-wide heads (~12 s); the tiny exports stay quick
@pytest.mark.slow
def test_bf16_graph_keeps_fp32_islands_and_head_sizes_64_72(heads_bf16):
    assert (HEADS_64_72.head_dim, HEADS_64_72.pixel_head_dim) == (64, 72)
    step = inspect_graph(heads_bf16.step)
    assert _graph_problems(heads_bf16.step) == []
    assert step.attention is AttentionForm.FUSED
    assert step.weight_dtypes.get("BFLOAT16", 0) > 0
    assert {"Sin", "Cos", "Sigmoid"} <= set(step.island_dtypes)
    assert step.non_fp32_islands() == {}, step.island_dtypes
    check_model_by_path(heads_bf16.step)


# slow: the same bf16 export as above
@pytest.mark.slow
@needs_rtx
def test_trt_rtx_parses_attention_with_heads_64_and_72(heads_bf16):
    rep = trt_parse(heads_bf16.step)
    assert rep.attention_layers in (0, HEADS_64_72.patch_depth + HEADS_64_72.pixel_depth)


# slow: the same bf16 export as above
@pytest.mark.slow
def test_ort_cpu_refuses_bf16_with_a_clear_error(heads_bf16):
    from pid_trt.backends.ort_backend import OrtBackend

    with pytest.raises(BackendUnavailableError, match="bfloat16"):
        OrtBackend(heads_bf16.prepare, heads_bf16.step, HEADS_64_72, Bucket(64, 64), 1, Precision.BF16)
