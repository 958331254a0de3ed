"""Serving PiD on NVIDIA Triton Inference Server (``pidtrt serve``) and its clients.

One Triton model, ``pid_decoder``, runs :class:`pid_trt.Decoder` inside Triton's Python
backend (the ``tritonserver`` binary and backend shipped in the ``nvidia-pytriton`` wheel;
pip extra ``serve``). Triton does the HTTP / gRPC front end, the metrics, the dynamic
batching and the bounded queue; each model instance (one per GPU, or ``--instances`` on the
CPU) is a separate process with its own Decoder.

Modules:

- :mod:`pid_trt.serve.config`: the server's options and the Triton model configuration
  they become (no third-party imports);
- :mod:`pid_trt.serve.batch`: one batch of requests -> per-request images or errors
  (validation per request, one decode per size, each request's own noise);
- :mod:`pid_trt.serve.inflight`: answers of PNG requests sent once their PNGs are encoded,
  while the instance decodes the next batch (bounded);
- :mod:`pid_trt.serve.model`: the Triton Python-backend model (runs inside Triton);
- :mod:`pid_trt.serve.server`: starts / stops ``tritonserver`` with that model;
- :mod:`pid_trt.serve.client`: :class:`PidClient` (KServe v2 over HTTP, ``tritonclient``);
- :mod:`pid_trt.serve.loadtest`: ``pidtrt bench --server``.

Why not PyTriton's in-process inference callable: in nvidia-pytriton 0.7 an exception in
the callable fails every request of the batch (its proxy has no per-request error), while
Triton's Python backend returns one response per request, each with its own error. So a
malformed request here fails alone and its neighbours in the batch still get their images.
"""

from pid_trt.serve.config import MODEL_NAME, ModelOptions, ServeOptions

__all__ = ["MODEL_NAME", "ModelOptions", "ServeOptions"]
