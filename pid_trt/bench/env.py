"""What machine and software a figure was measured with: device name, driver, versions."""

from __future__ import annotations

import os
import shutil
import subprocess

from pid_trt.bench.records import Environment
from pid_trt.resources import cpu_model

#: Distributions whose versions go into every record (those installed).
PACKAGES: tuple[str, ...] = (
    "torch",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "tensorrt-cu12",
    "tensorrt-rtx-cu12-bindings",
    "nvidia-modelopt",
    "onnx",
    "numpy",
)


def package_versions() -> dict[str, str]:
    """Installed versions of :data:`PACKAGES` (read from metadata: nothing is imported)."""
    from pid_trt.versions import package_versions as installed

    return installed(PACKAGES)


def nvidia_driver() -> str | None:
    """The NVIDIA driver version from ``nvidia-smi``, or None when there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.stdout.strip().splitlines()
    return first[0].strip() if out.returncode == 0 and first else None


def collect_environment(device: str = "cpu") -> Environment:
    """The :class:`Environment` of ``device`` ("cpu" or "cuda[:n]") on this machine."""
    cores = os.cpu_count() or 1
    cpu = cpu_model()
    versions = package_versions()
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        name = torch.cuda.get_device_name(index)
        if torch.version.cuda:
            versions["cuda (torch build)"] = torch.version.cuda
        return Environment(name, "cuda", cpu, cores, nvidia_driver(), versions)
    return Environment(f"{cpu} ({cores} cores)", "cpu", cpu, cores, None, versions)
