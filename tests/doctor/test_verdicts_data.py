"""The doctor's decisions for other machines, as data: device facts in, verdicts out.

Expected verdicts come from the hardware: TensorRT-RTX builds for SM 7.5 / 8.0 / 8.6 / 8.9 /
12.0 / 12.1 (default 8.6, 8.9, 12.0) and not for Hopper (SM 9.0) or data-centre Blackwell (SM
10.0); FP8 tensor cores exist from SM 8.9 (Ada) on; ``--builder auto`` takes full TensorRT
when it is installed and a GPU is present. Memory: flux-2k has 1.36 G parameters (2.7 GB in
bf16, 5.4 GB in fp32).
"""

from __future__ import annotations

import json

import pytest

from pid_trt.config import get_preset
from pid_trt.doctor import judge, resolve_job
from pid_trt.doctor.facts import (
    EngineFacts,
    ExtraFacts,
    FlavourFacts,
    GpuFacts,
    MachineFacts,
    OutputFacts,
    StoreFacts,
)
from pid_trt.errors import ConfigError

GB = 10**9
WITH_ISAL = OutputFacts("1.9.1")
RTX_LIST = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")


def machine(
    gpus=(), trt: str | None = None, rtx: str | None = "1.7.1.116", providers=("CPUExecutionProvider",),
    memory: int = 64 * GB, engines=(), modelopt: str | None = "0.47.0", outputs: OutputFacts = WITH_ISAL,
) -> MachineFacts:  # fmt: skip
    return MachineFacts(
        cpu_count=16, cpu_model="test CPU", memory_total=memory, memory_available=memory,
        torch_version="2.13.0+cu128" if gpus else "2.13.0+cpu", torch_cuda="12.8" if gpus else None,
        gpus=tuple(gpus), tensorrt=FlavourFacts("tensorrt", trt),
        tensorrt_rtx=FlavourFacts("tensorrt-rtx", rtx, RTX_LIST if rtx else ()),
        ort_version="1.22.0", ort_providers=tuple(providers),
        extras=(ExtraFacts("nvidia-modelopt", "fp8", "fp8", modelopt),),
        store=StoreFacts("engines", bool(engines), tuple(engines)), outputs=outputs,
    )  # fmt: skip


H100 = GpuFacts(0, "NVIDIA H100 80GB HBM3", "9.0", 80 * GB, 79 * GB)
B200 = GpuFacts(0, "NVIDIA B200", "10.0", 180 * GB, 178 * GB)
RTX4090 = GpuFacts(0, "NVIDIA GeForce RTX 4090", "8.9", 24 * GB, 23 * GB)
RTX5090 = GpuFacts(0, "NVIDIA GeForce RTX 5090", "12.0", 32 * GB, 31 * GB)
RTX3090 = GpuFacts(0, "NVIDIA GeForce RTX 3090", "8.6", 24 * GB, 23 * GB)
A100 = GpuFacts(0, "NVIDIA A100-SXM4-80GB", "8.0", 80 * GB, 79 * GB)


def job(backend: str = "tensorrt", backbone: str | None = "flux", **kw):
    return resolve_job(backend=backend, backbone=backbone, **kw)


def line(report, check: str):
    found = [v for v in report.machine + report.job if v.check == check]
    assert found, f"no verdict {check!r} in {[v.check for v in report.machine + report.job]}"
    return found[0]


def engine_pair(
    precision: str,
    height: int,
    width: int,
    targets: tuple[str, ...],
    status: str = "ok",
    flavour: str = "tensorrt-rtx",
):
    """The two manifests' keys of a static pair of flux-2k with seeded random weights (the key a
    ``pidtrt build --random-weights`` writes), as the store lists them."""
    from pid_trt.stores.keys import weights_id, weights_sha256

    net = json.loads(get_preset("flux", "2k").config.to_json())
    key = {
        "net_config": net, "precision": precision, "height": height, "width": width, "batch_range": [1, 1, 1],
        "compute_capabilities": list(targets), "flavour": flavour, "trt_version": "1.7.1.116",
        "checkpoint_sha256": weights_sha256(weights_id(random_seed=0)),
    }  # fmt: skip
    return [EngineFacts(f"{g}000000000000", g, key, 1000, status) for g in ("prepare", "step")]


# ---------------------------------------------------------------- H100 (SM 9.0, 80 GB)
def test_h100_with_tensorrt_rtx_only_needs_full_tensorrt() -> None:
    report = judge(machine([H100]), job())
    builder = line(report, "builder")
    assert not builder.ok and "does not target SM 9.0" in builder.message
    assert builder.fix == "pip install 'pid-trt[tensorrt]'"
    assert not report.runnable and "full TensorRT is needed" in report.reason
    assert not line(report, "engines cuda:0").ok  # the machine section says the same


def test_h100_with_full_tensorrt_runs_fp8_in_one_shot_and_fits() -> None:
    j = job("tensorrt:fp8")
    facts = machine(
        [H100], trt="10.13.0", engines=engine_pair("fp8", 2048, 2048, ("9.0",), flavour="tensorrt")
    )
    report = judge(facts, j)
    assert "auto picks tensorrt" in line(report, "builder").message and line(report, "builder").ok
    assert line(report, "fp8 cuda:0").ok  # Hopper has FP8 tensor cores
    assert line(report, "size").message.startswith("2048x2048 batch 1: one shot")
    assert line(report, "memory").ok
    assert line(report, "backend").ok
    # no checkpoint named: engines keyed by any weights are not matched on weights
    assert line(report, "engine").ok and report.runnable


def test_b200_is_data_centre_blackwell_not_an_rtx_target() -> None:
    report = judge(machine([B200]), job())
    assert not line(report, "builder").ok and "SM 10.0" in line(report, "builder").message


# ---------------------------------------------------------------- RTX 4090 (SM 8.9, 24 GB)
def test_rtx4090_builds_with_tensorrt_rtx_fp8_and_fits_2k() -> None:
    report = judge(machine([RTX4090]), job("tensorrt:fp8"))
    b = line(report, "builder")
    assert b.ok and "picks tensorrt-rtx" in b.message and "--target-cc" not in b.message
    assert line(report, "fp8 cuda:0").ok and line(report, "backend").ok
    assert line(report, "memory").ok  # 2.7 GB of bf16-sized weights, activations of one 2K image
    eng = line(report, "engine")
    assert not eng.ok and eng.blocking
    assert eng.fix.startswith("pidtrt build --backbone flux --ckpt-type 2k --size 2048x2048 --precision fp8")
    assert not report.runnable and "no usable fp8 engine" in report.reason


def test_rtx4090_4k_outside_the_2kto4k_envelope_is_tiled() -> None:
    report = judge(machine([RTX4090]), job("tensorrt", ckpt_type="2kto4k", size="4096x4096"))
    size = line(report, "size")
    assert "tiles of" in size.message and "outside the trained sizes" in size.message


def test_engine_built_for_rtx_targets_serves_the_4090_and_not_an_h100() -> None:
    pair = engine_pair("bf16", 2048, 2048, ("8.6", "8.9", "12.0"))
    j = job("tensorrt", backbone="flux")
    assert line(judge(machine([RTX4090], engines=pair), j), "engine").ok
    h100 = judge(machine([H100], trt="10.13.0", engines=pair), j)
    assert not line(h100, "engine").ok and "built for SM 8.6,8.9,12.0" in line(h100, "engine").message


def test_stale_engine_is_not_used_and_named() -> None:
    pair = engine_pair("bf16", 2048, 2048, ("8.6", "8.9", "12.0"), status="stale")
    report = judge(machine([RTX4090], engines=pair), job())
    assert not line(report, "engine").ok and "stale" in line(report, "engine").message
    assert not line(report, "engines").ok and line(report, "engines").fix.startswith("pidtrt engines rm")


# ---------------------------------------------------------------- RTX 5090 (SM 12.0, 32 GB)
def test_rtx5090_is_a_default_rtx_target_with_fp8() -> None:
    report = judge(machine([RTX5090]), job("tensorrt:fp8"))
    assert line(report, "builder").ok and "SM 12.0" in line(report, "builder").message
    assert line(report, "fp8 cuda:0").ok and line(report, "engines cuda:0").ok
    assert line(report, "backend").ok and line(report, "memory").ok


# ---------------------------------------------------------------- older RTX / A100
def test_rtx3090_has_no_fp8() -> None:
    report = judge(machine([RTX3090]), job("tensorrt:fp8"))
    assert not line(report, "fp8 cuda:0").ok
    assert not line(report, "backend").ok and "no FP8 tensor cores" in report.reason
    assert judge(machine([RTX3090]), job("tensorrt:bf16")).job[0].ok


def test_a100_needs_an_explicit_rtx_target() -> None:
    report = judge(machine([A100]), job())
    assert line(report, "builder").ok and "--target-cc 8.0" in line(report, "builder").message
    assert line(report, "engine").fix.endswith("--target-cc 8.0")


# ---------------------------------------------------------------- CPU-only box
def test_cpu_box_cannot_run_tensorrt_but_builds_with_rtx() -> None:
    cpu = machine(memory=8 * GB)
    report = judge(cpu, job())
    assert not report.runnable and "needs an NVIDIA GPU" in report.reason
    assert line(report, "builder").ok and "build here" in line(report, "builder").message
    assert not line(report, "cuda").ok and not line(report, "fp8").ok
    assert line(report, "tensorrt-rtx").ok


def test_cpu_box_torch_fp32_flux_does_not_fit_8_gb() -> None:
    # fp32 weights alone are 5.4 GB; with the activations of a 2K image a one-shot decode
    # needs well over 8 GB, and no tile smaller than 2048x2048 is a trained size
    report = judge(machine(memory=8 * GB), job("torch", size="2048x2048"))
    mem = line(report, "memory")
    assert not mem.ok and mem.blocking and not report.runnable
    assert judge(machine(memory=64 * GB), job("torch", size="2048x2048")).runnable


def test_cpu_box_onnxruntime_bf16_is_refused_fp32_runs() -> None:
    assert not judge(machine(), job("onnxruntime:bf16", backbone=None)).runnable
    assert judge(machine(), job("onnxruntime", backbone=None)).runnable
    assert not judge(machine(), job("onnxruntime@cuda", backbone=None)).runnable  # no GPU
    gpu_box = judge(machine([RTX4090]), job("onnxruntime@cuda", backbone=None))
    assert not gpu_box.runnable and "no GPU provider" in gpu_box.reason
    assert judge(
        machine([RTX4090], providers=("CUDAExecutionProvider",)), job("onnxruntime@cuda", backbone=None)
    ).runnable


def test_no_tensorrt_flavour_at_all() -> None:
    report = judge(machine([RTX4090], rtx=None), job())
    assert not line(report, "builder").ok and line(report, "builder").fix == "pip install 'pid-trt[rtx]'"


def test_missing_modelopt_names_the_fp8_extra() -> None:
    assert "pid-trt[fp8]" in line(judge(machine([RTX4090], modelopt=None)), "fp8 cuda:0").fix


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"backend": "nope"}, "--backend 'nope' is not known"),
        ({"backend": "torch:fp8"}, "the torch backend runs fp32, bf16, fp16"),
        ({"backend": "tensorrt", "device": "cpu"}, "the tensorrt backend runs on cuda"),
        ({"backbone": None, "size": "64x64"}, "add --backbone"),
    ],
)
def test_bad_job_options_are_one_line_errors(kwargs, words) -> None:
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("[", r"\[")):
        resolve_job(**kwargs)


# ---------------------------------------------------------------- output encoders
def test_output_encoders_per_machine() -> None:
    """PNG: ISA-L where isal imports, else zlib (~3x slower; a fix given); JPEG: libjpeg-turbo
    on a CPU box, nvJPEG for CUDA decodes where torchvision imports, else a fix."""
    cpu = judge(machine(outputs=OutputFacts("1.9.1")))
    assert line(cpu, "png").ok and "ISA-L" in line(cpu, "png").message and "1.9.1" in line(cpu, "png").message
    assert line(cpu, "jpeg").ok and "libjpeg-turbo" in line(cpu, "jpeg").message
    no_isal = line(judge(machine(outputs=OutputFacts(None))), "png")
    assert not no_isal.ok and "zlib" in no_isal.message and "isal" in no_isal.fix
    h100 = judge(machine(gpus=[H100], trt="10.13", outputs=OutputFacts("1.9.1", "0.28.0")))
    assert (
        line(h100, "jpeg").ok
        and "nvJPEG" in line(h100, "jpeg").message
        and "0.28.0" in line(h100, "jpeg").message
    )
    bare = line(judge(machine(gpus=[H100], trt="10.13", outputs=OutputFacts("1.9.1"))), "jpeg")
    assert not bare.ok and "torchvision" in bare.fix
