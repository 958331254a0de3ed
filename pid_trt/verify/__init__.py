"""Parity verification of an engine / graph / model against the reference, with Polygraphy.

- :mod:`pid_trt.verify.metrics`: the project's one comparison path (Polygraphy's comparison
  functions: max / mean |d|, elementwise atol/rtol, L2, cosine, SNR; PSNR at a fixed range);
- :mod:`pid_trt.verify.bounds`: the bound of each figure per precision, in one table;
- :mod:`pid_trt.verify.pairs`: a reference and a candidate backend through the same noise,
  compared per sampler step (on the reference's x) and on the final image;
- :mod:`pid_trt.verify.layers`: the step graph layer by layer (Polygraphy, all outputs marked);
- :mod:`pid_trt.verify.parity`: one output against its reference in Polygraphy's atol / rtol terms;
- :mod:`pid_trt.verify.golden`: the official network's golden vectors (``tests/golden/``) as cases;
- :mod:`pid_trt.verify.inventory`: the released checkpoints' key / shape inventory (package data);
- :mod:`pid_trt.verify.report`: the Markdown + JSON report, the per-step plot, the worst crop;
- :mod:`pid_trt.verify.engine_info`: what is inside one stored engine (``pidtrt engines show``);
- :mod:`pid_trt.verify.fp8_sensitivity`: the FP8 image PSNR of each layer group (the sweep
  behind the default FP8 exclusions).

Nothing heavy is imported here: ``polygraphy`` and ``onnxruntime`` load inside the functions.
"""
