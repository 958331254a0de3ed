"""Denoiser backends: one class per ``--backend`` name, registered in
:data:`pid_trt.backends.registry.BACKENDS` (torch, the reference; torch-compile; onnxruntime;
tensorrt), each stating the precisions and devices it runs and its defaults.

Each backend turns one decode's conditioning into a :class:`pid_trt.sampling.Denoiser`
(:meth:`pid_trt.backends.base.Backend.bind`); :func:`pid_trt.backends.factory.create_backend`
makes one from a :class:`pid_trt.backends.factory.BackendRequest`. Heavy optional imports
happen inside the backend modules, never here.
"""
