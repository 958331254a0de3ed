"""pid-trt: deploy NVIDIA's PiD pixel-diffusion decoder as compiled TensorRT engines."""

__version__ = "0.1.0"
