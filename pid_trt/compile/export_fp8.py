"""FP8 step graph: the ModelOpt-quantized step exported with ONNX Q/DQ (float8e4m3fn).

The dynamo exporter sees ModelOpt's quantizers (in ModelOpt's torch-export mode) as the
custom op ``tensorrt::quantize_op(x, amax, 8, 4, ...)``; :func:`fp8_translation_table`
translates it to ``QuantizeLinear -> DequantizeLinear`` with a per-tensor scale
``amax / 448`` in the graph's base type (bf16 by default, see :func:`export_fp8_step`) and a float8e4m3fn zero point (saturating, round-to-nearest-even), which ONNX
Runtime's CPU provider runs (float32 base only: it has no bf16 MatMul) and TensorRT(-RTX)
turns into FP8 GEMMs. The prepare graph is exported unquantized by :mod:`pid_trt.compile.export`.

``modelopt`` and ``onnxscript`` are imported only inside these functions.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from pid_trt.compile.quantize import DEFAULT_FP8_EXCLUDE, CalibrationSpec, quantize_fp8
from pid_trt.compile.trace import StepGraph, export_module

#: Largest finite E4M3 magnitude.
E4M3_MAX = 448.0


def fp8_translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``: ModelOpt's static
    quantize op -> ONNX QuantizeLinear/DequantizeLinear (opset >= 19) in float8e4m3fn."""
    import numpy as np
    import onnx_ir as ir
    from onnxscript import opset23 as op

    from pid_trt.errors import ConfigError

    def quantize_op(
        x, amax, num_bits: int, exponent_bits: int, unsigned: bool = False, narrow_range: bool = False
    ):
        if (num_bits, exponent_bits) != (8, 4) or unsigned:
            raise ConfigError(
                f"ONNX export of a {num_bits}-bit (exponent {exponent_bits}) quantizer: only FP8 E4M3 is supported"
            )
        scale = op.Div(op.CastLike(amax, x), op.CastLike(op.Constant(value_float=E4M3_MAX), x))
        zero = op.Constant(value=ir.tensor(np.zeros((), dtype=np.uint8), dtype=ir.DataType.FLOAT8E4M3FN))
        return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero), scale, zero)

    return {torch.ops.tensorrt.quantize_op.default: quantize_op}


def export_fp8_step(
    model: nn.Module,
    step_args: tuple,
    names: tuple[list[str], list[str]],
    path: Path,
    opset: int,
    calib: CalibrationSpec,
    exclude: Sequence[str] = DEFAULT_FP8_EXCLUDE,
    fp8_attention: bool = False,
    base: torch.dtype = torch.bfloat16,
) -> nn.Module:
    """Quantize a copy of ``model`` (fp32, unchanged) with :func:`quantize_fp8` and write its
    step graph to ``path`` (+ external data). ``step_args``: example inputs of
    ``PidNet.step``; ``names``: (input names, output names); ``base``: the dtype of the
    unquantized layers and of the activations around the FP8 GEMMs (bf16: attention fuses in
    TensorRT; float32: runs on ONNX Runtime's CPU provider, for accuracy checks). Returns the
    quantized copy, cast to ``base``."""
    from modelopt.torch.quantization.utils import export_torch_mode

    quantized = quantize_fp8(copy.deepcopy(model), model.config, calib, exclude, fp8_attention).to(base)
    with export_torch_mode():
        export_module(
            StepGraph(quantized), step_args, names, path, opset, translations=fp8_translation_table()
        )
    return quantized
