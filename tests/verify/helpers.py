"""Shared by the verify tests: a golden case as a user has it (net config JSON, converted
checkpoint, latent file), and the CLI in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from pid_trt.verify.golden import load_golden


def golden_user_files(golden: Path, out: Path) -> dict[str, Path]:
    """Write ``net.json``, ``ckpt.safetensors`` and ``lat.safetensors`` of a golden case into ``out``."""
    from pid_trt.checkpoints import convert_checkpoint
    from pid_trt.io import write_latent_file

    case = load_golden(golden)
    d = case.tensors
    out.mkdir(parents=True, exist_ok=True)
    files = {"net": out / "net.json", "ckpt": out / "ckpt.safetensors", "latent": out / "lat.safetensors"}
    files["net"].write_text(json.dumps(case.config.to_upstream()))
    raw = out / "raw.safetensors"
    save_file({f"net.{k}": v.contiguous() for k, v in case.model.state_dict().items()}, str(raw))
    convert_checkpoint(raw, files["ckpt"], case.config)
    raw.unlink()
    write_latent_file(files["latent"], d["in/lq_latent"], d["in/y"], d["in/degrade_sigma"])
    return files


def model_args(files: dict[str, Path]) -> list[str]:
    return [
        "--net-config",
        str(files["net"]),
        "--checkpoint",
        str(files["ckpt"]),
        "--latents",
        str(files["latent"]),
    ]
