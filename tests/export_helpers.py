"""Shared helpers of the export / ORT parity tests: golden cases as (config, model, tensors),
and a process-wide cache of exports so each (case, precision) is exported once per run."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pid_trt.buckets import Bucket
from pid_trt.config import DecoderConfig
from pid_trt.export import ExportKey, ExportResult, export_onnx, weights_id
from pid_trt.model import PidDecoder

_EXPORTS: dict[tuple, ExportResult] = {}


def load_golden(path: Path) -> tuple[DecoderConfig, PidDecoder, dict[str, torch.Tensor]]:
    """A golden file's config (from ``upstream_config``), the model with its weights, its tensors."""
    meta = safe_open(str(path), "pt").metadata()
    tensors = load_file(str(path))
    config = DecoderConfig.from_upstream(json.loads(meta["upstream_config"]))
    model = PidDecoder(config).eval()
    model.load_state_dict({k[len("weights/") :]: v for k, v in tensors.items() if k.startswith("weights/")})
    return config, model, tensors


def golden_export(path: Path, precision: str, root: Path) -> tuple[ExportResult, DecoderConfig, dict]:
    """Export (once per test run) a golden case at ``precision`` into ``root``."""
    config, model, d = load_golden(path)
    b, _, h, w = d["in/x"].shape
    cache = (str(path), precision)
    if cache not in _EXPORTS:
        from pid_trt.checkpoints import file_sha256

        key = ExportKey.create(
            config, weights_id(checkpoint_sha256=file_sha256(path)), Bucket(h, w), precision, b
        )
        _EXPORTS[cache] = export_onnx(model, key, root)
    return _EXPORTS[cache], config, d
