"""What this machine can do, and whether a job runs here: a pure function of the facts
(:mod:`pid_trt.doctor.facts`) and the job (:mod:`pid_trt.doctor.job`). Nothing here reads the
machine, so the decisions for an H100, an RTX 4090 or a CPU-only box are tested as data.

The rules, as the rest of the package applies them:

- ``--builder auto`` (:func:`pid_trt.trt_flavour.detect_flavour`): full TensorRT when it is
  installed and a CUDA device is present, else TensorRT-RTX when installed, else none.
- TensorRT-RTX builds on any machine (CPU ahead-of-time included) for the compute
  capabilities it lists (1.7: SM 7.5, 8.0, 8.6, 8.9, 12.0, 12.1; default 8.6, 8.9, 12.0) and
  runs on those only: not Hopper (SM 9.0) nor data-centre Blackwell (SM 10.0), which need full
  TensorRT; full TensorRT builds for the GPU it runs on.
- FP8 needs FP8 tensor cores: SM 8.9 or newer; building fp8 engines needs ModelOpt.
- One shot or tiles, and the memory a decode needs: :func:`pid_trt.tiling.plan` over
  :func:`pid_trt.resources.estimate_decode_memory`, as the Decoder's memory check.
- The engine a TensorRT decode loads: a static pair of the size and batch, or a dynamic one
  whose range holds them, of this net, weights and precision, built for the device
  (:func:`pid_trt.stores.select.select_pair`'s rule, over the manifests).
"""

from __future__ import annotations

from pid_trt.doctor.facts import GpuFacts, MachineFacts
from pid_trt.doctor.job import Job
from pid_trt.doctor.job_verdicts import job_verdicts
from pid_trt.doctor.rules import (
    PIP_RTX,
    PIP_TENSORRT,
    RTX_DEFAULT_TARGETS,
    Report,
    Verdict,
    arch,
    auto_builder,
    fp8_ok,
    rtx_targets,
)

_GIB = float(1 << 30)


def judge(facts: MachineFacts, job: Job | None = None) -> Report:
    """The doctor's verdicts on ``facts`` and, when given, on ``job``."""
    machine = (
        _host(facts) + _gpu_lines(facts) + _flavours(facts) + _fp8(facts) + _runtime(facts) + _outputs(facts)
        + _store(facts)
    )  # fmt: skip
    return Report(machine, job_verdicts(facts, job) if job is not None else ())


def _host(f: MachineFacts) -> tuple[Verdict, ...]:
    cpu = Verdict(
        "cpu", True,
        f"{f.cpu_count} CPU cores ({f.cpu_model}), {f.memory_available / _GIB:.1f} GiB of "
        f"{f.memory_total / _GIB:.1f} GiB memory available",
    )  # fmt: skip
    build = f"CUDA {f.torch_cuda} build" if f.torch_cuda else "CPU build, no CUDA"
    return cpu, Verdict("torch", True, f"torch {f.torch_version} ({build})")


def _gpu_lines(f: MachineFacts) -> tuple[Verdict, ...]:
    if not f.gpus:
        fix = (
            "on a machine with an NVIDIA GPU: pip install torch --index-url https://download.pytorch.org/whl/cu128"
            if not f.torch_cuda
            else "check the NVIDIA driver: nvidia-smi"
        )
        return (
            Verdict(
                "cuda", False,
                "no CUDA device: decodes run on the CPU; TensorRT engines can be built here but not run",
                fix,
            ),
        )  # fmt: skip
    return tuple(
        Verdict(
            f"cuda:{g.index}",
            True,
            f"cuda:{g.index} {g.name}: {arch(g.cc)}, {g.free_bytes / _GIB:.1f} of {g.total_bytes / _GIB:.1f} GiB free",
        )  # fmt: skip
        for g in f.gpus
    )


def _flavours(f: MachineFacts) -> tuple[Verdict, ...]:
    out = []
    if f.tensorrt.version is not None:
        out.append(Verdict("tensorrt", True, f"TensorRT {f.tensorrt.version}: builds and runs engines for the GPU present"))  # fmt: skip
    else:
        where = "" if f.gpus else " (it builds only on a machine with an NVIDIA GPU)"
        out.append(Verdict(
            "tensorrt", False,
            f"TensorRT (full) not installed: needed for Hopper (SM 9.0) and data-centre Blackwell (SM 10.0){where}",
            PIP_TENSORRT,
        ))  # fmt: skip
    targets = ", ".join(rtx_targets(f))
    if f.tensorrt_rtx.version is not None:
        out.append(Verdict(
            "tensorrt-rtx", True,
            f"TensorRT-RTX {f.tensorrt_rtx.version}: builds here (no GPU needed) for SM {targets} "
            f"(default {', '.join(RTX_DEFAULT_TARGETS)}); not Hopper (9.0) or data-centre Blackwell (10.0)",
        ))  # fmt: skip
    else:
        out.append(Verdict(
            "tensorrt-rtx", False, f"TensorRT-RTX not installed: builds on any machine for SM {targets}", PIP_RTX
        ))  # fmt: skip
    for g in f.gpus:
        out.append(_engines_for_gpu(f, g))
    builder = auto_builder(f)
    out.append(Verdict(
        "auto builder", builder is not None,
        f"pidtrt build --builder auto picks {builder}" if builder else "no TensorRT flavour: pidtrt build cannot run",
        "" if builder else PIP_RTX,
    ))  # fmt: skip
    return tuple(out)


def _engines_for_gpu(f: MachineFacts, g: GpuFacts) -> Verdict:
    """Which flavour makes engines that run on GPU ``g``."""
    name = f"cuda:{g.index} ({arch(g.cc)})"
    if g.cc in rtx_targets(f):
        how = "TensorRT-RTX targets it" + ("" if g.cc in RTX_DEFAULT_TARGETS else f" with --target-cc {g.cc}")
        if f.tensorrt.version is not None:
            how += "; full TensorRT builds for it"
        return Verdict(f"engines cuda:{g.index}", True, f"engines for {name}: {how}")
    if f.tensorrt.version is not None:
        return Verdict(f"engines cuda:{g.index}", True, f"engines for {name}: full TensorRT builds for it")
    return Verdict(
        f"engines cuda:{g.index}", False,
        f"engines for {name}: TensorRT-RTX does not target {g.cc}; full TensorRT is needed", PIP_TENSORRT,
    )  # fmt: skip


def _fp8(f: MachineFacts) -> tuple[Verdict, ...]:
    modelopt = next((e for e in f.extras if e.distribution == "nvidia-modelopt"), None)
    calib = "" if modelopt is None or modelopt.version else "; building fp8 engines needs ModelOpt"
    fix = "" if not calib else "pip install 'pid-trt[fp8]'"
    if not f.gpus:
        return (
            Verdict(
                "fp8", False,
                "FP8: no GPU here: fp8 engines build here (TensorRT-RTX, SM 8.9 / 12.0) but run only on SM 8.9 "
                f"or newer{calib}", fix,
            ),
        )  # fmt: skip
    out = []
    for g in f.gpus:
        has = fp8_ok(g)
        what = "has FP8 tensor cores" if has else "has no FP8 tensor cores (SM 8.9 or newer has)"
        out.append(
            Verdict(f"fp8 cuda:{g.index}", has, f"FP8: cuda:{g.index} ({arch(g.cc)}) {what}{calib}", fix)
        )
    return tuple(out)


def _runtime(f: MachineFacts) -> tuple[Verdict, ...]:
    out = []
    if f.ort_version is None:
        out.append(Verdict("onnxruntime", False, "ONNX Runtime not installed: the onnxruntime backend", "pip install 'pid-trt[cpu]'"))  # fmt: skip
    else:
        gpu = any(p in f.ort_providers for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))
        short = ", ".join(p.removesuffix("ExecutionProvider") for p in f.ort_providers)
        if f.gpus and not gpu:
            out.append(Verdict(
                "onnxruntime", False, f"ONNX Runtime {f.ort_version}: providers {short}; no GPU provider",
                "pip install 'pid-trt[gpu]'",
            ))  # fmt: skip
        else:
            out.append(Verdict("onnxruntime", True, f"ONNX Runtime {f.ort_version}: providers {short}"))
    for e in f.extras:
        if e.distribution == "onnxruntime":
            continue
        if e.version is not None:
            out.append(Verdict(e.distribution, True, f"{e.distribution} {e.version}: {e.purpose}"))
        else:
            out.append(Verdict(
                e.distribution, False, f"{e.distribution} not installed: {e.purpose}", f"pip install 'pid-trt[{e.extra}]'"
            ))  # fmt: skip
    return tuple(out)


def _outputs(f: MachineFacts) -> tuple[Verdict, ...]:
    """The encoders output files get here: the default PNG's deflater, and where JPEGs are encoded."""
    o = f.outputs
    if o.isal is not None:
        png = Verdict("png", True, f"PNG outputs: ISA-L deflate (isal {o.isal}), the fast default")
    else:
        png = Verdict(
            "png", False, "PNG outputs: zlib deflate (isal not installed: the default PNG takes ~3x longer)",
            "pip install isal",
        )  # fmt: skip
    if not f.gpus:
        jpeg = Verdict("jpeg", True, "JPEG outputs: libjpeg-turbo on the CPU")
    elif o.torchvision is not None:
        jpeg = Verdict(
            "jpeg", True, f"JPEG outputs of CUDA decodes: nvJPEG on the GPU (torchvision {o.torchvision})"
        )
    else:
        jpeg = Verdict(
            "jpeg", False, "JPEG outputs: libjpeg-turbo on the CPU; nvJPEG on the GPU needs torchvision",
            "pip install torchvision (the build that matches this torch)",
        )  # fmt: skip
    return png, jpeg


def _store(f: MachineFacts) -> tuple[Verdict, ...]:
    s = f.store
    if not s.exists:
        return (Verdict("engines", True, f"engine store {s.path}: empty (pidtrt build fills it)"),)
    bad = [e for e in s.engines if e.status != "ok"]
    text = f"engine store {s.path}: {len(s.engines)} plan(s), {s.total_bytes / 2**20:,.1f} MiB"
    if not bad:
        return (Verdict("engines", True, text),)
    stale = sum(e.status == "stale" for e in bad)
    fix = " && ".join(f"pidtrt engines rm {e.digest[:12]} --engine-dir {s.path}" for e in bad[:3])
    return (
        Verdict(
            "engines", False,
            f"{text}; {stale} stale, {len(bad) - stale} corrupt ({bad[0].reason or bad[0].status})", fix,
        ),
    )  # fmt: skip
