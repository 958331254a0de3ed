"""Golden vectors of the official PiD network (``tests/golden/*.safetensors``), as test cases.

A golden file holds a small random-weight network (``weights/<upstream name>``), its
inputs (``in/x`` [B,3,H,W], ``in/t`` [B] already x 1000, ``in/y`` [B,T,D_txt],
``in/lq_latent`` [B,C,h,w], ``in/degrade_sigma`` [B]), one network call's ``out/velocity``
[B,3,H,W], the sampler's noises ``sampler/noise0..3`` [B,3,H,W] and the 4-step
``out/image`` [B,3,H,W] in [-1, 1]; its metadata ``upstream_config`` is the JSON of the
upstream ``PidNet`` keyword arguments. Parity tests and the parity table read them here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pid_trt.config import NetConfig
from pid_trt.model import PidNet

_WEIGHTS = "weights/"


@dataclass(frozen=True)
class GoldenCase:
    """One golden file: its name (file stem), config, the model holding its weights (eval,
    float32) and every tensor of the file by name."""

    name: str
    config: NetConfig
    model: PidNet
    tensors: dict[str, torch.Tensor]

    @property
    def size(self) -> tuple[int, int, int]:
        """(batch, height, width) of the output image."""
        b, _, h, w = self.tensors["in/x"].shape
        return b, h, w

    def noises(self) -> list[torch.Tensor]:
        """The sampler's four noise draws, each [B, 3, H, W]."""
        return [self.tensors[f"sampler/noise{i}"] for i in range(4)]


def load_golden(path: str | Path) -> GoldenCase:
    """Read a golden file: config from ``upstream_config``, weights loaded strictly."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"golden file {path} not found: expected a golden case of the official network "
            "(tests/golden/README.md says what one holds)"
        )
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    tensors = load_file(str(path))
    config = NetConfig.from_upstream(json.loads(meta["upstream_config"]))
    model = PidNet(config).eval()
    weights = {k[len(_WEIGHTS) :]: v for k, v in tensors.items() if k.startswith(_WEIGHTS)}
    model.load_state_dict(weights, strict=True)
    return GoldenCase(path.stem, config, model, tensors)
