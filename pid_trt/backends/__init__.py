"""Denoiser backends: torch (the reference), onnxruntime, tensorrt.

Each backend turns one decode's conditioning into a :class:`pid_trt.sampling.Denoiser`.
Heavy optional imports happen inside the backend modules, never here.
"""
