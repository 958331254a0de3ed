"""FP8 (E4M3) post-training quantization of the step graph with NVIDIA Model Optimizer.

What is quantized: the ``Linear`` layers that run every sampler step (MMDiT trunk, latent
gates, PiT blocks), weights and inputs per-tensor E4M3, amax by max calibration. The
prepare-graph layers (caption projection, latent adapter convs and heads) run once per
decode and are never quantized; the layers named by ``exclude`` stay in their own precision.

Calibration follows the sampler's own trajectory: for ``CalibrationSpec.num_samples`` seeded
random latents/captions the fp32 model runs the 4-step decode and every step input
(x_t at each timestep, with its conditioning) is recorded; calibration replays them.

Image quality is scored as PSNR (dB) of the quantized 4-step decode against the fp32 decode
of the same inputs and noises (:func:`decode`); the per-group sensitivity sweep that chose
:data:`DEFAULT_FP8_EXCLUDE` is :mod:`pid_trt.verify.fp8_sensitivity`.

``modelopt`` is imported only inside the functions that need it (the ``fp8`` extra).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pid_trt.config import NetConfig
from pid_trt.errors import BackendUnavailableError, ConfigError
from pid_trt.sampling import TIMESCALE, draw_noise, sample

#: Layer groups of the step graph, as quantizer-name wildcards (fnmatch, module names of
#: :class:`~pid_trt.model.PidNet`). The sensitivity sweep runs over these.
FP8_GROUPS: dict[str, tuple[str, ...]] = {
    "s_embedder": ("s_embedder.*",),
    "t_embedder": ("t_embedder.*",),
    "mmdit_adaln": ("patch_blocks.*.adaLN_modulation_*",),
    "mmdit_qkv": ("patch_blocks.*.attn.qkv_*",),
    "mmdit_proj": ("patch_blocks.*.attn.proj_*",),
    "mmdit_mlp": ("patch_blocks.*.mlp_*",),
    "lq_gates": ("lq_proj.gate_modules.*", "pit_lq_gate.*"),
    "pixel_embedder": ("pixel_embedder.*",),
    "pit_adaln": ("pixel_blocks.*.adaLN_modulation.*",),
    "pit_compact": ("pixel_blocks.*.compress_to_attn.*", "pixel_blocks.*.expand_from_attn.*"),
    "pit_attn": ("pixel_blocks.*.attn.qkv.*", "pixel_blocks.*.attn.proj.*"),
    "pit_mlp": ("pixel_blocks.*.mlp.*",),
    "final_layer": ("final_layer.*",),
}

#: Prepare-graph layers (once per decode): never quantized.
PREPARE_LAYERS: tuple[str, ...] = (
    "y_embedder.*",
    "lq_proj.latent_proj.*",
    "lq_proj.output_heads.*",
    "lq_proj.pit_head.*",
)

#: Step-graph layers left unquantized by default, from the sensitivity sweep
#: (:func:`pid_trt.verify.fp8_sensitivity.fp8_sensitivity`; random weights, so re-check with trained ones): the groups whose
#: quantization alone costs the most image PSNR -- the PiT modulation (the largest single
#: loss, and the largest GEMM of the network: ~14% of step MACs at 2K stay bf16), the PiT
#: pixel MLP (K = 16), the first/last layers (s / pixel embedders, final layer) -- plus the
#: per-sample modulation/timestep linears, which cost no compute. The latent gates'
#: ``content_proj`` is quantized: it ranks among the least sensitive groups.
DEFAULT_FP8_EXCLUDE: tuple[str, ...] = tuple(
    p
    for g in (
        "t_embedder",
        "mmdit_adaln",
        "s_embedder",
        "pixel_embedder",
        "pit_adaln",
        "pit_mlp",
        "final_layer",
    )
    for p in FP8_GROUPS[g]
)

#: E4M3 as ModelOpt spells it: (exponent bits, mantissa bits).
_E4M3 = (4, 3)


@dataclass(frozen=True)
class CalibrationSpec:
    """How calibration inputs are drawn.

    num_samples: seeded random decodes (latent + caption + noise each); height, width:
    output pixels; seed: first seed (sample i uses seed + i); steps: sampler steps (4 =
    released); degrade_sigma: latent degradation sigma fed to the gates; batch: images per decode.
    """

    num_samples: int = 4
    height: int = 256
    width: int = 256
    seed: int = 0
    steps: int = 4
    degrade_sigma: float = 0.0
    batch: int = 1

    def __post_init__(self) -> None:
        for name in ("num_samples", "height", "width", "steps", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"calibration {name}={value!r}: expected a positive integer")
        if not 0.0 <= self.degrade_sigma:
            raise ConfigError(f"calibration degrade_sigma={self.degrade_sigma!r}: expected >= 0")


#: Longest edge (pixels) FP8 calibration decodes at. Per-tensor FP8 scales do not depend on
#: the resolution: `small` at 512^2 gives 36.4 dB image PSNR whether calibrated at 128^2,
#: 256^2 or 512^2 (2 held-out seeds, bf16 base), while a 2048^2 flux calibration decode takes
#: about an hour on a 2-core CPU. Larger buckets calibrate at this size, aspect kept.
CALIBRATION_MAX_EDGE = 512


def calibration_for_bucket(
    config: NetConfig, height: int, width: int, batch: int = 1, max_edge: int = CALIBRATION_MAX_EDGE
) -> CalibrationSpec:
    """The default :class:`CalibrationSpec` of an FP8 export of ``height`` x ``width``: the
    bucket itself, or scaled down so its longer edge is at most ``max_edge``, each edge a
    whole number (at least one) of latent cells and patches."""
    if max(height, width) <= max_edge:
        return CalibrationSpec(height=height, width=width, batch=batch)
    scale = max_edge / max(height, width)
    cell = math.lcm(config.pixels_per_latent, config.patch_size)
    h, w = (max(cell, round(edge * scale / cell) * cell) for edge in (height, width))
    return CalibrationSpec(height=h, width=w, batch=batch)


@dataclass(frozen=True)
class DecodeInputs:
    """One calibration or evaluation decode's inputs: caption [B, T, D_txt], latent [B, C, h, w],
    degrade_sigma [B], the sampler's noises (each [B, 3, H, W]); height, width in pixels."""

    caption: torch.Tensor
    latent: torch.Tensor
    degrade_sigma: torch.Tensor
    noise: tuple[torch.Tensor, ...]
    height: int
    width: int


@dataclass(frozen=True)
class StepInputs:
    """One recorded ``PidNet.step`` call: x [B, 3, H, W]; t [B] (x1000); y_emb, lq_feats,
    degrade_sigma, pit_feat as :meth:`PidNet.step` takes them (float32)."""

    x: torch.Tensor
    t: torch.Tensor
    y_emb: torch.Tensor
    lq_feats: torch.Tensor
    degrade_sigma: torch.Tensor
    pit_feat: torch.Tensor | None


def random_conditioning(config: NetConfig, spec: CalibrationSpec, seed: int) -> DecodeInputs:
    """Seeded standard-normal caption and latent, plus the sampler's noises, for one decode."""
    h, w = config.latent_size(spec.height, spec.width)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    b = spec.batch
    caption = torch.randn(b, config.txt_max_length, config.txt_embed_dim, generator=gen)
    latent = torch.randn(b, config.lq_latent_channels, h, w, generator=gen)
    noise = draw_noise((b, config.in_channels, spec.height, spec.width), spec.steps, seed=seed)
    sigma = torch.full((b,), float(spec.degrade_sigma))
    return DecodeInputs(caption, latent, sigma, tuple(noise), spec.height, spec.width)


class RecordingDenoiser:
    """The :class:`~pid_trt.sampling.Denoiser` of one decode on ``model`` (a
    :class:`~pid_trt.model.PidNet`): ``model.prepare`` once, here, then ``model.step`` per call.
    With ``record`` (a list) every step call's :class:`StepInputs` is appended to it.
    Call it under ``torch.no_grad()``."""

    def __init__(self, model: nn.Module, inputs: DecodeInputs, record: list | None = None) -> None:
        self.model, self.record = model, record
        self.prepared = model.prepare(inputs.caption, inputs.latent, inputs.height, inputs.width)
        self.degrade_sigma = inputs.degrade_sigma
        self.batch = inputs.caption.shape[0]

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        p = self.prepared
        tt = torch.full((self.batch,), t * TIMESCALE, dtype=torch.float32)
        inputs = StepInputs(x, tt, p.y_emb, p.lq_feats, self.degrade_sigma, p.pit_feat)
        if self.record is not None:
            self.record.append(inputs)
        return _run_step(self.model, inputs)


def decode(model: nn.Module, cond: DecodeInputs, steps: int = 4, record: list | None = None) -> torch.Tensor:
    """The released sampler (:func:`pid_trt.sampling.sample`) over a :class:`RecordingDenoiser`
    of ``model``; image [B, 3, H, W] in [-1, 1]. With ``record`` (a list) every step call's
    :class:`StepInputs` is appended to it."""
    with torch.no_grad():
        return sample(RecordingDenoiser(model, cond, record), list(cond.noise), steps)


def _run_step(model: nn.Module, s: StepInputs) -> torch.Tensor:
    return model.step(s.x, s.t, s.y_emb, s.lq_feats, s.degrade_sigma, s.pit_feat)


def collect_calibration(model: nn.Module, config: NetConfig, calib: CalibrationSpec) -> list[StepInputs]:
    """Step inputs along the fp32 sampler trajectory: ``num_samples * steps`` entries, in
    decode order (seed, then timestep). ``model`` must be the unquantized fp32 model."""
    records: list[StepInputs] = []
    for i in range(calib.num_samples):
        decode(model, random_conditioning(config, calib, calib.seed + i), calib.steps, records)
    return records


# --------------------------------------------------------------------------- ModelOpt
def require_modelopt() -> None:
    """Raise :class:`BackendUnavailableError` (one line, with the install command) unless
    NVIDIA Model Optimizer is importable; call it before any FP8 work starts."""
    _require_modelopt()


def _require_modelopt():
    # ModelOpt warns at import that `transformers` is absent (only its HF export needs it).
    warnings.filterwarnings("ignore", message="Cannot find transformers package")
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as exc:
        raise BackendUnavailableError(
            f"FP8 quantization needs NVIDIA Model Optimizer ({exc}): pip install 'pid-trt[fp8]'"
        ) from None
    _register_modules()
    return mtq


@functools.cache
def _register_modules() -> None:
    """Teach ModelOpt our ``nn.Linear`` subclasses and attention modules (once per process)."""
    import torch.nn.functional as F
    from modelopt.torch.quantization.nn import QuantModuleRegistry, TensorQuantizer
    from modelopt.torch.quantization.nn.modules.quant_module import (
        QuantInputBase,
        QuantLinearConvBase,
        QuantModule,
    )
    from modelopt.torch.quantization.utils import replace_function

    from pid_trt.model.layers import Fp32Linear, Linear
    from pid_trt.model.mmdit import JointAttention
    from pid_trt.model.pit import RotaryAttention

    class _QuantPidLinear(QuantLinearConvBase):
        """Our Linear / Fp32Linear: input and weight fake-quantized around the original forward."""

    class _QuantPidAttention(QuantModule):
        """q, k, v quantized at the SDPA call (the BMM inputs of fused FP8 attention)."""

        def _setup(self):
            desc = QuantInputBase.default_quant_desc_input
            self.q_bmm_quantizer = TensorQuantizer(desc)
            self.k_bmm_quantizer = TensorQuantizer(desc)
            self.v_bmm_quantizer = TensorQuantizer(desc)

        def forward(self, *args, **kwargs):
            sdpa = F.scaled_dot_product_attention

            def quantized_sdpa(q, k, v, *a, **kw):
                return sdpa(
                    self.q_bmm_quantizer(q), self.k_bmm_quantizer(k), self.v_bmm_quantizer(v), *a, **kw
                )

            with replace_function(F, "scaled_dot_product_attention", quantized_sdpa):
                return super().forward(*args, **kwargs)

    for cls, qcls in (
        (Linear, _QuantPidLinear),
        (Fp32Linear, _QuantPidLinear),
        (JointAttention, _QuantPidAttention),
        (RotaryAttention, _QuantPidAttention),
    ):
        if cls not in QuantModuleRegistry:
            QuantModuleRegistry.register({cls: f"pid_trt.{cls.__name__}"})(qcls)


def _quant_cfg(exclude: Iterable[str], fp8_attention: bool) -> dict:
    fp8 = {"num_bits": _E4M3, "axis": None}
    entries: list[dict] = [
        {"quantizer_name": "*", "enable": False},
        {"quantizer_name": "*weight_quantizer", "cfg": dict(fp8)},
        {"quantizer_name": "*input_quantizer", "cfg": dict(fp8)},
    ]
    if fp8_attention:
        entries += [{"quantizer_name": f"*{n}_bmm_quantizer", "cfg": dict(fp8)} for n in "qkv"]
    for pattern in (*PREPARE_LAYERS, *exclude):
        entries.append({"quantizer_name": pattern, "enable": False})
    return {"quant_cfg": entries, "algorithm": "max"}


def _check_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    if isinstance(patterns, str):
        raise ConfigError(f"exclude={patterns!r}: expected a tuple of wildcard patterns, not one string")
    out = tuple(patterns)
    for p in out:
        if not isinstance(p, str) or not p:
            raise ConfigError(f"exclude pattern {p!r}: expected a non-empty wildcard string")
    return out


def quantize_fp8(
    model: nn.Module,
    config: NetConfig,
    calib: CalibrationSpec,
    exclude: Sequence[str] = DEFAULT_FP8_EXCLUDE,
    fp8_attention: bool = False,
    samples: Sequence[StepInputs] | None = None,
) -> nn.Module:
    """FP8 E4M3 PTQ of the step graph (ModelOpt fake quant); quantizes ``model`` in place and returns it.

    ``model``: a float32 :class:`~pid_trt.model.PidNet` built from ``config``;
    ``exclude``: quantizer-name wildcards left unquantized (see :data:`FP8_GROUPS`);
    ``fp8_attention``: also quantize the q / k / v inputs of every SDPA call;
    ``samples``: calibration step inputs (default: :func:`collect_calibration` with ``calib``,
    from ``model`` before it is quantized).
    """
    if getattr(model, "config", None) != config:
        raise ConfigError(
            "quantize_fp8: model.config differs from the config given; expected the model's own"
        )
    exclude = _check_patterns(exclude)
    mtq = _require_modelopt()
    if samples is None:
        samples = collect_calibration(model, config, calib)
    if not samples:
        raise ConfigError("quantize_fp8: no calibration samples; expected at least one step input")

    def forward_loop(m: nn.Module) -> None:
        with torch.no_grad():
            for s in samples:
                _run_step(m, s)

    model.eval()
    with contextlib.redirect_stdout(io.StringIO()):  # ModelOpt prints "Inserted N quantizers"
        return mtq.quantize(model, _quant_cfg(exclude, fp8_attention), forward_loop)


def enabled_quantizers(model: nn.Module) -> list[str]:
    """Names of the enabled ModelOpt quantizers of a quantized model (sorted)."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    return sorted(n for n, m in model.named_modules() if isinstance(m, TensorQuantizer) and m.is_enabled)


__all__ = [
    "DEFAULT_FP8_EXCLUDE",
    "FP8_GROUPS",
    "PREPARE_LAYERS",
    "CalibrationSpec",
    "DecodeInputs",
    "RecordingDenoiser",
    "StepInputs",
    "collect_calibration",
    "decode",
    "enabled_quantizers",
    "quantize_fp8",
    "random_conditioning",
]
