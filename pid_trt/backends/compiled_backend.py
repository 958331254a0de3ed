"""The torch-compile backend: the torch backend with the network's ``step`` and ``forward``
under :func:`torch.compile` (``max-autotune`` on CUDA, inductor's default on the CPU).

The first decode at each new shape compiles (seconds to minutes); later decodes reuse the
compiled graphs. Results match the torch backend within the precision's rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pid_trt.backends.torch_backend import TorchBackend

if TYPE_CHECKING:
    from pid_trt.model import PidNet


class TorchCompileBackend(TorchBackend):
    """:class:`TorchBackend` with ``model.step`` / ``model.forward`` compiled."""

    name = "torch-compile"
    compiles_on_first_decode = True

    def __init__(self, model: PidNet, device: torch.device, dtype: torch.dtype, hoist: bool = True):
        super().__init__(model, device, dtype, hoist=hoist)
        mode = "max-autotune" if device.type == "cuda" else None
        # Compile per instance: the model object is this backend's own (attributes, not the class).
        # Instance attributes shadow the methods: the compiled callables (mypy: a method assigned).
        self.model.step = torch.compile(self.model.step, mode=mode)  # type: ignore[method-assign]
        self.model.forward = torch.compile(self.model.forward, mode=mode)  # type: ignore[method-assign]
