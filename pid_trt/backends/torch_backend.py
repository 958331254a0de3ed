"""The torch backend: the parity reference, on CPU or CUDA, fp32 or bf16 weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pid_trt.backends.base import Backend, Conditioning
from pid_trt.config import Precision
from pid_trt.errors import ConfigError
from pid_trt.sampling import TIMESCALE, Denoiser

if TYPE_CHECKING:
    from pid_trt.backends.factory import BackendRequest
    from pid_trt.model import PidNet

_DTYPES = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


class TorchBackend(Backend):
    """Runs :class:`pid_trt.model.PidNet` eagerly.

    With ``hoist`` (default) the latent adapter and caption projection run once per decode
    (``model.prepare``) and each step runs ``model.step``; without it every step runs the
    full ``model.forward``, as upstream does.
    """

    name = "torch"
    precisions = (Precision.FP32, Precision.BF16, Precision.FP16)
    devices = ("cpu", "cuda")
    shares_sizes = True
    loads_weights_at_start = True

    @classmethod
    def default_precision(cls, device: str) -> Precision:
        """fp32 on the CPU (bf16 matmuls are slow there), bf16 on a GPU (PiD's training precision)."""
        return Precision.FP32 if device == "cpu" else Precision.BF16

    def __init__(self, model: PidNet, device: torch.device, dtype: torch.dtype, hoist: bool = True):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device = device
        self.dtype = dtype
        self.hoist = hoist

    @classmethod
    def from_request(cls, request: BackendRequest) -> TorchBackend:
        precision = request.precision
        if precision not in _DTYPES:
            raise ConfigError(
                f"--precision {precision.value}: the {cls.name} backend runs fp32, bf16 or fp16"
            )
        device = request.torch_device
        return cls(request.load_model(), device, _DTYPES[precision], hoist=request.hoist)

    def bind(self, cond: Conditioning) -> Denoiser:
        model, dev = self.model, self.device
        latent = cond.latent.to(dev, torch.float32)
        caption = cond.caption.to(dev, torch.float32)
        sigma = cond.degrade_sigma.to(dev, torch.float32)
        batch = cond.batch
        if self.hoist:
            with torch.inference_mode():
                prepared = model.prepare(caption, latent, cond.height, cond.width)

            def denoise(x: torch.Tensor, t: float) -> torch.Tensor:
                tt = torch.full((batch,), t * TIMESCALE, dtype=torch.float32, device=dev)
                with torch.inference_mode():
                    xx = x.to(dev, torch.float32)
                    return model.step(
                        xx, tt, prepared.y_emb, prepared.lq_feats, sigma, prepared.pit_feat
                    ).float()

        else:

            def denoise(x: torch.Tensor, t: float) -> torch.Tensor:
                tt = torch.full((batch,), t * TIMESCALE, dtype=torch.float32, device=dev)
                with torch.inference_mode():
                    return model(x.to(dev, torch.float32), tt, caption, latent, sigma).float()

        return denoise

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
