"""The compile stage: torch reference -> ONNX per bucket (+ FP8 Q/DQ), graph checks,
ONNX -> TensorRT(-RTX) plan, and the prepare + step engine pair.

Modules, in the order the data flows: :mod:`.trace` (one module -> one ONNX graph),
:mod:`.export` (both graphs of a bucket, cached in the ONNX store), :mod:`.quantize` and
:mod:`.export_fp8` (FP8 post-training quantization), :mod:`.onnx_graph` (optimisation and
checks), :mod:`.trt_flavour` (TensorRT vs TensorRT-RTX), :mod:`.build` (one plan),
:mod:`.engine_pair` (export + both plans + their manifests), :mod:`.engine_select` (the runtime's
choice of a pair). Dynamic shapes (one pair for a range of sizes): :mod:`.dynamic`; weightless
(refittable) plans: :mod:`.refit`.
"""
