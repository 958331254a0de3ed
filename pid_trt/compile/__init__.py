"""The compile stage: torch reference -> ONNX per bucket (+ FP8 Q/DQ), graph checks,
ONNX -> TensorRT(-RTX) plan, and the prepare + step engine pair.

Modules, in the order the data flows: :mod:`.trace` (one module -> one ONNX graph),
:mod:`.export` (both graphs of a bucket, into the export store; :func:`.export.ensure_export`),
:mod:`.quantize` and :mod:`.export_fp8` (FP8 post-training quantization), :mod:`.onnx_graph`
(optimisation and checks), :mod:`.build` (one plan; the TensorRT flavours are
:mod:`pid_trt.trt_flavour`), :mod:`.plan` (the rules of a build request), :mod:`.engine_pair`
(export + both plans into the engine store). Dynamic shapes (one pair for a range of sizes):
:mod:`.dynamic`; weightless (refittable) plans: :mod:`.refit`. What is stored, and the runtime's
choice of a pair from the store, live below in :mod:`pid_trt.stores`.
"""
