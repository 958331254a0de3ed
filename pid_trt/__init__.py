"""pid-trt: deploy NVIDIA's PiD pixel-diffusion decoder as compiled TensorRT engines.

The public API is :class:`Decoder` (``from pid_trt import Decoder``); it is imported on
first use, so ``import pid_trt`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Decoder", "__version__"]

if TYPE_CHECKING:
    from pid_trt.decoder import Decoder


def __getattr__(name: str) -> Any:
    if name == "Decoder":
        from pid_trt.decoder import Decoder

        return Decoder
    raise AttributeError(f"module 'pid_trt' has no attribute {name!r}")
