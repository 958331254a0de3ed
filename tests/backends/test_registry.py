"""The backend registry, the NAME[:PRECISION][@DEVICE] grammar, and the one set of defaults
every front end (Decoder, server, bench, verify) reads from the backend classes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pid_trt
from pid_trt.backends.base import Backend
from pid_trt.backends.registry import BACKENDS, BackendSpec, backend_class
from pid_trt.bench.cases import bench_runtimes
from pid_trt.config import Precision
from pid_trt.errors import ConfigError
from pid_trt.options import NetOptions, Runtime, RuntimeOptions
from pid_trt.serve.config import ModelOptions
from pid_trt.verify.pairs import resolve_side

TINY = NetOptions(backbone="tiny", random_weights=True)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_registered_name_is_a_backend_class_of_that_name(name: str) -> None:
    cls = backend_class(name)
    assert issubclass(cls, Backend) and cls.name == name
    assert cls.default_device() in cls.devices
    for device in cls.devices:
        assert cls.default_precision(device) in cls.precisions


def test_importing_a_backend_class_imports_no_optional_runtime() -> None:
    code = (
        "import sys; from pid_trt.backends.registry import BACKENDS, backend_class\n"
        "[backend_class(n) for n in BACKENDS]\n"
        "print(sorted(m for m in ('onnxruntime', 'tensorrt', 'tensorrt_rtx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("text", "name", "precision", "device"),
    [
        ("torch", "torch", None, None),
        ("tensorrt:fp8", "tensorrt", Precision.FP8, None),
        ("torch:bf16@cuda:1", "torch", Precision.BF16, "cuda:1"),
        ("onnxruntime@CPU", "onnxruntime", None, "cpu"),
        ("torch-compile:fp16", "torch-compile", Precision.FP16, None),
    ],
)
def test_backend_grammar(text: str, name: str, precision: Precision | None, device: str | None) -> None:
    assert BackendSpec.parse(text) == BackendSpec(name, precision, device)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("jax", "--backend 'jax' is not known"),
        ("torch:int4", "precision 'int4' is not known"),
        ("torch@tpu", "expected cpu or cuda"),
        ("torch@cuda:x", "expected cpu or cuda"),
    ],
)
def test_bad_backend_text_is_one_line(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        BackendSpec.parse(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("runtime", "backend", "precision", "device"),
    [
        (RuntimeOptions(), "torch", Precision.FP32, "cpu"),
        (RuntimeOptions("tensorrt"), "tensorrt", Precision.BF16, "cuda"),
        (RuntimeOptions("onnxruntime", "fp16"), "onnxruntime", Precision.FP16, "cpu"),
        (RuntimeOptions("torch:bf16"), "torch", Precision.BF16, "cpu"),
        (RuntimeOptions("torch", device="cuda"), "torch", Precision.BF16, "cuda"),
        (RuntimeOptions("onnxruntime@cuda"), "onnxruntime", Precision.FP16, "cuda"),
    ],
)
def test_runtime_options_apply_the_backends_defaults(
    runtime: RuntimeOptions, backend: str, precision: Precision, device: str
) -> None:
    r = runtime.resolve()
    assert (r.name, r.backend, r.precision, r.device) == (backend, backend_class(backend), precision, device)
    assert r.moved_from is None and r.moved is None
    assert r.options().resolve() == r  # idempotent


def test_a_fallback_device_is_asked_for_and_said() -> None:
    """One policy: a device the backend cannot run on is refused, unless the front end asks for
    the backend's own device; then the runtime names the device asked for, in one line."""
    asked = RuntimeOptions("tensorrt", "fp8", device="cpu", engine_dir="e")
    with pytest.raises(ConfigError, match="the tensorrt backend runs on cuda"):
        asked.resolve()
    r = asked.resolve(fallback_device=True)
    assert (r.name, r.precision, r.device, r.moved_from) == ("tensorrt", Precision.FP8, "cuda", "cpu")
    assert r.engine_dir == Path("e") and r.moved == "tensorrt:fp8 runs on cuda, not cpu: moved to cuda"
    same = RuntimeOptions("torch", device="cpu").resolve(fallback_device=True)
    assert same.device == "cpu" and same.moved is None
    assert Runtime.from_dict(r.to_dict()) == r.on("cuda")  # the move is said once, not carried on


def test_bench_verify_and_serve_never_compare_a_backend_name() -> None:
    """They ask the backend class (graph, compiles_on_first_decode, loads_weights_at_start,
    makes_artifacts, artifacts()) instead: no registered name in a comparison or a match."""
    root = Path(pid_trt.__file__).parent
    found = []
    for package in ("bench", "verify", "serve"):
        for path in sorted((root / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Compare):
                    parts = [node.left, *node.comparators]
                elif isinstance(node, ast.match_case):
                    parts = [node.pattern]
                else:
                    continue
                names = {
                    c.value
                    for p in parts
                    for c in ast.walk(p)
                    if isinstance(c, ast.Constant) and c.value in BACKENDS
                }
                found += [f"{path.name}:{node.lineno if hasattr(node, 'lineno') else '?'} {n}" for n in names]
    assert found == []


@pytest.mark.parametrize(
    ("runtime", "words"),
    [
        (RuntimeOptions("tensorrt", device="cpu"), "the tensorrt backend runs on cuda"),
        (RuntimeOptions("torch", "fp8"), "the torch backend runs fp32, bf16, fp16"),
        (RuntimeOptions("torch:bf16", "fp16"), "two precisions"),
        (RuntimeOptions("torch", device="tpu"), "expected cpu or cuda"),
    ],
)
def test_runtime_options_refuse_what_the_backend_cannot_take(runtime: RuntimeOptions, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        runtime.resolve()


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_every_front_end_gets_the_same_default_precision(name: str, device: str) -> None:
    """decode / Decoder (RuntimeOptions), serve (ModelOptions.check), bench (bench_runtimes) and
    verify (resolve_side) all read the default from the backend class, so they agree."""
    cls = backend_class(name)
    dev = device if device in cls.devices else cls.default_device()
    expected = cls.default_precision(dev)
    assert RuntimeOptions(name, device=dev).resolve().precision is expected
    assert bench_runtimes([name], RuntimeOptions(device=dev))[0].precision is expected
    assert resolve_side(name, dev).precision is expected
    served = ModelOptions(TINY, RuntimeOptions(name, device=dev)).check()
    assert served["precision"] == expected.value and served["backend"] == name


def test_unavailable_says_why_in_one_line() -> None:
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")  # pragma: no cover
    reason = backend_class("tensorrt").unavailable("cuda", Precision.BF16)
    assert reason is not None and "GPU" in reason and "\n" not in reason
    assert backend_class("torch").unavailable("cpu", Precision.FP32) is None
    ort = backend_class("onnxruntime").unavailable("cpu", Precision.BF16)
    assert ort is not None and "bfloat16" in ort


@pytest.mark.slow  # torch.compile through the CLI, ~70 s on 2 cores
def test_torch_compile_backend_decodes_like_torch_from_the_cli(tmp_path: Path) -> None:
    """A backend added as one file + one registry line runs from `pidtrt decode`."""
    sample = [
        sys.executable,
        "-m",
        "pid_trt.cli.main",
        "sample-latent",
        "--backbone",
        "tiny",
        "--size",
        "64x64",
    ]
    subprocess.run([*sample, "-o", str(tmp_path / "lat.safetensors")], check=True, capture_output=True)
    outs = {}
    for name in ("torch", "torch-compile"):
        out = tmp_path / f"{name}.safetensors"
        res = subprocess.run(
            [sys.executable, "-m", "pid_trt.cli.main", "decode", str(tmp_path / "lat.safetensors"), "-o", str(out),
             "--backbone", "tiny", "--random-weights", "--backend", name],  # fmt: skip
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert name in res.stdout
        from safetensors.torch import load_file

        outs[name] = load_file(out)["image"]
    # inductor reorders float32 reductions: the two agree to float32 rounding over 4 steps
    assert torch.allclose(outs["torch"], outs["torch-compile"], atol=1e-4, rtol=0)
