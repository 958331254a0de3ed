"""Which layer groups of the step graph FP8 quantization hurts most: the sweep behind
:data:`pid_trt.compile.quantize.DEFAULT_FP8_EXCLUDE`.

For each group of :data:`~pid_trt.compile.quantize.FP8_GROUPS`, the image PSNR (dB, at the
[-1, 1] range: :func:`pid_trt.verify.metrics.psnr`, the project's one comparison path) of the
4-step decode with that group quantized alone, and with every other group quantized, against
the fp32 decode of the same inputs and noises. Needs the ``fp8`` extra (ModelOpt).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from pid_trt.compile.quantize import (
    FP8_GROUPS,
    CalibrationSpec,
    collect_calibration,
    decode,
    quantize_fp8,
    random_conditioning,
)
from pid_trt.config import NetConfig
from pid_trt.errors import ConfigError
from pid_trt.verify.metrics import psnr

#: The sweep's calibration: :class:`CalibrationSpec`'s defaults (4 seeded decodes at 256x256).
DEFAULT_CALIBRATION = CalibrationSpec()


@dataclass(frozen=True)
class Sensitivity:
    """Image PSNR (dB, vs fp32) with one layer group quantized alone (``only``) and with every
    group but that one quantized (``all_but``)."""

    group: str
    only_db: float
    all_but_db: float


def fp8_sensitivity(
    model: nn.Module,
    config: NetConfig,
    calib: CalibrationSpec = DEFAULT_CALIBRATION,
    eval_seeds: Sequence[int] = (1000,),
    groups: Sequence[str] | None = None,
    all_but: bool = True,
) -> tuple[float, list[Sensitivity]]:
    """Per-group FP8 sensitivity: (PSNR with every group quantized, [per-group results]).

    PSNR is the mean over ``eval_seeds`` of the quantized 4-step decode vs the fp32 decode
    (same inputs and noises), in dB; ``all_but=False`` skips the leave-one-out runs (their
    ``all_but_db`` is NaN) and halves the cost. ``model`` (fp32) is left unchanged; each variant is
    quantized on a deep copy with the same calibration step inputs.
    """
    names = list(FP8_GROUPS) if groups is None else list(groups)
    for g in names:
        if g not in FP8_GROUPS:
            raise ConfigError(f"sensitivity group {g!r}: expected one of {', '.join(FP8_GROUPS)}")
    samples = collect_calibration(model, config, calib)
    conds = [random_conditioning(config, calib, s) for s in eval_seeds]
    refs = [decode(model, c, calib.steps) for c in conds]

    def score(exclude: tuple[str, ...]) -> float:
        q = quantize_fp8(copy.deepcopy(model), config, calib, exclude, samples=samples)
        return sum(psnr(decode(q, c, calib.steps), r) for c, r in zip(conds, refs, strict=True)) / len(conds)

    every = score(())
    out = []
    for g in names:
        others = tuple(p for h in FP8_GROUPS if h != g for p in FP8_GROUPS[h])
        out.append(Sensitivity(g, score(others), score(FP8_GROUPS[g]) if all_but else math.nan))
    return every, out
