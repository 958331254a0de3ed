"""Shared helpers of the export / ORT parity tests: golden cases as (config, model, tensors),
and a process-wide cache of exports so each (case, precision) is exported once per run."""

from __future__ import annotations

from pathlib import Path

import torch

from pid_trt.buckets import Bucket
from pid_trt.compile.export import export_onnx
from pid_trt.config import NetConfig
from pid_trt.model import PidNet
from pid_trt.stores.exports import ExportResult
from pid_trt.stores.keys import ExportKey, weights_id
from pid_trt.verify.golden import load_golden as read_golden

_EXPORTS: dict[tuple, ExportResult] = {}


def load_golden(path: Path) -> tuple[NetConfig, PidNet, dict[str, torch.Tensor]]:
    """A golden file's config, the model with its weights, its tensors."""
    case = read_golden(path)
    return case.config, case.model, case.tensors


def golden_export(path: Path, precision: str, root: Path) -> tuple[ExportResult, NetConfig, dict]:
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
