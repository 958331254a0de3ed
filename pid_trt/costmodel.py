"""Analytic cost model of one PiD decode: FLOP, minimum bytes moved, parameters, roofline floor.

Units: FLOP (1 multiply-accumulate = 2 FLOP), bytes, seconds, parameters (elements).

FLOP count: matmul / convolution / attention work only. Elementwise work (norms, RoPE,
SiLU/GELU, softmax, modulation, residual adds) is excluded (bandwidth-bound: see bytes).
Attention is 4*B*heads*S^2*head_dim (QK^T and PV). The MMDiT sequence is text + image
(T + L); the last block's dead text-output branch is counted, as upstream executes it.

Hoisting: the LQ adapter (CNN + output heads) depends only on the latent and the caption
projection (y_embedder + position table) only on the text, so a deployment can run both once
per decode; un-hoisted they run every step. Both totals are exposed.

Minimum bytes per step (the roofline denominator), documented formula:
  weights:     per-step parameters x bytes/param of the precision (4 / 2 / 2 / 1 for
               fp32 / fp16 / bf16 / fp8; every weight counted at that width, a lower bound).
  activations: act_bytes x (2 x sum of the materialized intermediate tensors + graph inputs
               read + outputs written), assuming perfect fusion: every elementwise op rides
               in a GEMM prologue / epilogue, attention is fused (reads Q, K, V once, writes
               O once, no S^2 scores), the per-pixel MLP (16->64->16) stays on chip. A
               materialized tensor is written once and read once. act_bytes = the
               precision's bytes/param (fp8 activations at 1 byte: again a lower bound).
Materialized per MMDiT block: qkv (N x 3D), attention out (N x D), residual after attention
(N x D), SwiGLU hidden (N x M), residual after MLP (N x D); per injection the LQ feature
(L x D) is read. Per PiT block: AdaLN modulation (P x 256*6*16, the largest tensor),
compacted tokens (P x A), qkv (P x 3A), attention out (P x A), proj out (P x A), pixel
stream after attention and after MLP (2 x P x 4096).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pid_trt.config import Backbone, CkptType, GateType, NetConfig, Precision, get_preset
from pid_trt.errors import ConfigError

BYTES_PER_PARAM = {Precision.FP32: 4, Precision.FP16: 2, Precision.BF16: 2, Precision.FP8: 1}
_FREQ_DIM = 256  # sinusoidal timestep features (fixed upstream)
_PIT_MLP_RATIO = 4  # PiT per-pixel MLP 16 -> 64 -> 16


@dataclass(frozen=True)
class FlopBreakdown:
    """FLOP of one network forward (one sampler step), un-hoisted, by component."""

    mmdit_linear: float  # qkv / proj / SwiGLU / AdaLN of the 14 MMDiT blocks, text included
    mmdit_attention: float  # joint attention over T + L tokens
    lq_gates: float  # sigma-aware injection gates (v1: Linear 3072->1536 per token)
    pit_linear: float  # compress / qkv / proj / expand of the PiT compacted attention
    pit_attention: float  # PiT attention over L patch tokens
    pixel: float  # per-pixel AdaLN modulation (Linear 1536 -> 256*96) + per-pixel MLP
    embedders: float  # s / t embedders, pixel embedder, final layer
    lq_adapter: float  # LQ CNN + output heads (hoistable: once per decode)
    caption: float  # y_embedder (hoistable: once per decode)

    @property
    def total(self) -> float:
        """All components (FLOP per step, un-hoisted)."""
        return sum(dataclasses.astuple(self))

    @property
    def hoistable(self) -> float:
        """Work that depends only on the latent / text (FLOP): LQ adapter + caption projection."""
        return self.lq_adapter + self.caption


@dataclass(frozen=True)
class CostEstimate:
    """Cost of decoding ``batch`` images of ``height`` x ``width`` pixels in ``steps`` steps."""

    config: NetConfig
    height: int
    width: int
    batch: int
    steps: int
    precision: Precision
    tokens: int  # image (patch) tokens per image, L
    text_tokens: int  # T
    flops: FlopBreakdown  # per step, un-hoisted
    params: int  # total parameters (elements)
    weight_bytes_step: float  # bytes of per-step weights (hoisted deployment)
    weight_bytes_once: float  # bytes of hoistable weights (LQ adapter, caption projection)
    activation_bytes_step: float  # minimum activation bytes per step (hoisted)
    activation_bytes_once: float  # minimum activation bytes of the hoistable work

    @property
    def flops_per_step(self) -> float:
        """FLOP per step when nothing is hoisted."""
        return self.flops.total

    @property
    def flops_per_step_hoisted(self) -> float:
        """FLOP per step with the LQ adapter and caption projection hoisted out."""
        return self.flops.total - self.flops.hoistable

    @property
    def flops_per_decode(self) -> float:
        """FLOP per decode, hoisted: steps x step + once."""
        return self.steps * self.flops_per_step_hoisted + self.flops.hoistable

    @property
    def flops_per_decode_unhoisted(self) -> float:
        """FLOP per decode, un-hoisted: steps x full step."""
        return self.steps * self.flops_per_step

    @property
    def bytes_per_step(self) -> float:
        """Minimum bytes moved per step, hoisted."""
        return self.weight_bytes_step + self.activation_bytes_step

    @property
    def bytes_once(self) -> float:
        """Minimum bytes moved by the once-per-decode work."""
        return self.weight_bytes_once + self.activation_bytes_once

    @property
    def bytes_per_step_unhoisted(self) -> float:
        """Minimum bytes moved per step when the hoistable work reruns every step."""
        return self.bytes_per_step + self.bytes_once

    @property
    def bytes_per_decode(self) -> float:
        """Minimum bytes per decode, hoisted."""
        return self.steps * self.bytes_per_step + self.bytes_once


def param_count(config: NetConfig) -> int:
    """Exact parameter count (elements) of the inference state dict for ``config``."""
    c = config
    d, m, p2, ch = c.hidden_size, c.mlp_hidden, c.patch_size**2, c.in_channels
    ph, a = c.pixel_hidden_size, c.pixel_attn_hidden_size
    top = (
        c.txt_max_length * d  # y_pos_embedding
        + ch * ph + ph  # pixel_embedder
        + ch * p2 * d + d  # s_embedder
        + _FREQ_DIM * d + d + d * d + d  # t_embedder
        + c.txt_embed_dim * d + d + d  # y_embedder + norm
        + ph + ph * ch + ch  # final layer
    )  # fmt: skip
    mmdit = 4 * d + 2 * d * 3 * d + 4 * c.head_dim + 2 * (d * d + d) + 2 * 3 * d * m + 2 * (d * 6 * d + 6 * d)
    pmod = p2 * 6 * ph
    pit = (
        2 * (p2 * ph * a) + a + p2 * ph  # compress + expand
        + 2 * ph + a * 3 * a + 2 * c.pixel_head_dim + a * a + a  # norms, attn
        + 2 * ph * _PIT_MLP_RATIO * ph + _PIT_MLP_RATIO * ph + ph  # mlp
        + d * pmod + pmod  # per-pixel AdaLN
    )  # fmt: skip
    return top + c.patch_depth * mmdit + c.pixel_depth * pit + _lq_once_params(c) + _gate_params(c)


def _lq_once_params(c: NetConfig) -> int:
    """LQ CNN + output heads (+ pit_head): the hoistable adapter weights."""
    h = c.lq_hidden_dim
    cnn = 9 * c.lq_conv_in_channels * h + h + 9 * h * h + h
    cnn += c.lq_num_res_blocks * (4 * h + 2 * (9 * h * h + h))  # 2 GroupNorms + 2 convs each
    heads = (c.num_lq_outputs + int(c.pit_lq_inject)) * (h * c.hidden_size + c.hidden_size)
    return cnn + heads


def _gate_width(c: NetConfig) -> int:
    return c.hidden_size if c.lq_gate_type is GateType.PER_TOKEN_PER_DIM else 1


def _gate_params(c: NetConfig) -> int:
    g = _gate_width(c)
    return (c.num_lq_outputs + int(c.pit_lq_inject)) * (1 + 2 * c.hidden_size * g + g)


def estimate(
    config: NetConfig,
    height: int,
    width: int,
    batch: int = 1,
    steps: int = 4,
    precision: Precision = Precision.BF16,
) -> CostEstimate:
    """Analytic FLOP / bytes / params of decoding at ``height`` x ``width`` pixels (see module doc)."""
    c = config
    for name, value in (("height", height), ("width", width), ("batch", batch), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"cost estimate {name}={value!r}: expected a positive integer")
    if height % c.patch_size or width % c.patch_size:
        raise ConfigError(
            f"cost estimate size {width}x{height}: expected multiples of patch_size={c.patch_size}"
        )
    precision = Precision(precision)
    b, t, d, m, a = batch, c.txt_max_length, c.hidden_size, c.mlp_hidden, c.pixel_attn_hidden_size
    lt = (height // c.patch_size) * (width // c.patch_size)
    n, p, l_img = b * (t + lt), b * lt, b * lt  # MMDiT rows, PiT rows, image-token rows
    p2, ph, h = c.patch_size**2, c.pixel_hidden_size, c.lq_hidden_dim
    pixels, pmod = b * height * width, p2 * 6 * ph
    s_tok = t + lt

    def attn(heads: int, hd: int, seq: int) -> float:
        return 4.0 * b * heads * seq * seq * hd

    per_block_lin = 2.0 * n * (d * 3 * d + d * d + 3 * d * m) + 2 * 2.0 * b * d * 6 * d
    cnn_macs = 9 * c.lq_conv_in_channels * h + 9 * h * h + c.lq_num_res_blocks * 2 * 9 * h * h
    n_inject = c.num_lq_outputs + int(c.pit_lq_inject)
    flops = FlopBreakdown(
        mmdit_linear=c.patch_depth * per_block_lin,
        mmdit_attention=c.patch_depth * attn(c.num_groups, c.head_dim, s_tok),
        lq_gates=n_inject * 2.0 * l_img * 2 * d * _gate_width(c),
        pit_linear=c.pixel_depth * 2.0 * p * (2 * p2 * ph * a + a * 3 * a + a * a),
        pit_attention=c.pixel_depth * attn(c.pixel_num_groups, c.pixel_head_dim, lt),
        pixel=c.pixel_depth * 2.0 * (p * d * pmod + pixels * 2 * ph * _PIT_MLP_RATIO * ph),
        embedders=2.0
        * (l_img * c.in_channels * p2 * d + b * (_FREQ_DIM * d + d * d) + pixels * 2 * c.in_channels * ph),
        lq_adapter=2.0 * l_img * (cnn_macs + n_inject * h * d),
        caption=2.0 * b * t * c.txt_embed_dim * d,
    )

    once_params = _lq_once_params(c) + c.txt_embed_dim * d + 2 * d + t * d
    params = param_count(c)
    wb = BYTES_PER_PARAM[precision]
    # Activation elements (see module docstring): 2x materialized + inputs read + outputs written.
    mmdit_act = c.patch_depth * 2 * n * (6 * d + m) + n_inject * l_img * d
    pit_act = c.pixel_depth * 2 * p * (pmod + 4 * a + 2 * p2 * ph)
    # x in + v out, s tokens (write + read), pixel-embedder output (write + read)
    io_act = 2 * pixels * c.in_channels + 2 * l_img * d + 2 * p * p2 * ph
    # LQ: 2 + 2R conv outputs and the injection features (write + read); caption: y in, tokens out x2
    once_act = 2 * l_img * h * (2 + 2 * c.lq_num_res_blocks) + 2 * n_inject * l_img * d
    once_act += b * t * (c.txt_embed_dim + 2 * d)
    return CostEstimate(
        config=c, height=height, width=width, batch=batch, steps=steps, precision=precision,
        tokens=lt, text_tokens=t, flops=flops, params=params,
        weight_bytes_step=float((params - once_params) * wb),
        weight_bytes_once=float(once_params * wb),
        activation_bytes_step=float((mmdit_act + pit_act + io_act) * wb),
        activation_bytes_once=float(once_act * wb),
    )  # fmt: skip


@dataclass(frozen=True)
class GpuSpec:
    """Peak dense (no 2:4 sparsity) tensor-core TFLOP/s per precision and memory bandwidth in GB/s.

    Figures used (dense BF16 / FP16 / FP8 TFLOP/s, GB/s): H100 SXM 989.4 / 989.4 / 1978.9, 3350;
    H200 989.4 / 989.4 / 1978.9, 4800; B200 (HGX, 1000 W) 2250 / 2250 / 4500, 8000; RTX 4090
    165.2 / 165.2 / 330.3, 1008; RTX 5090 209.5 / 209.5 / 419, 1792. Datasheets quote "with
    sparsity" peaks; those are halved. GeForce: the FP32-accumulate rate (what cuBLAS and
    TensorRT use for BF16 and by default for FP16); FP16-accumulate is 2x (4090: FP16 330.3,
    FP8 660.6; 5090: 419 / 838). Public cuBLAS BF16 runs on the 5090 reach ~235 TFLOP/s,
    above 209.5 (boost clocks above the rated 2.41 GHz): treat its MFU with care.
    """

    name: str
    dense_tflops: dict[Precision, float]
    mem_bw_gbs: float
    source: str


def _gpu(name: str, bf16: float, fp8: float, bw: float, source: str) -> GpuSpec:
    return GpuSpec(name, {Precision.BF16: bf16, Precision.FP16: bf16, Precision.FP8: fp8}, bw, source)


GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in (
        _gpu("H100 SXM", 989.4, 1978.9, 3350.0,
             "NVIDIA H100 Tensor Core GPU datasheet, SXM5 (sparse 1979 / 3958 TF halved); HBM3 3.35 TB/s"),
        _gpu("H200", 989.4, 1978.9, 4800.0,
             "NVIDIA H200 Tensor Core GPU datasheet, SXM (sparse 1979 / 3958 TF halved); HBM3e 4.8 TB/s"),
        _gpu("B200", 2250.0, 4500.0, 8000.0,
             "NVIDIA HGX B200 datasheet, per GPU at 1000 W (sparse 4.5 / 9 PF halved); HBM3e 8 TB/s"),
        _gpu("RTX 4090", 165.2, 330.3, 1008.0,
             "NVIDIA Ada Lovelace GPU Architecture whitepaper, app. A (FP32 accumulate); GDDR6X 1008 GB/s"),
        _gpu("RTX 5090", 209.5, 419.0, 1792.0,
             "NVIDIA RTX Blackwell GPU Architecture whitepaper (FP32 accumulate); GDDR7 1792 GB/s"),
    )
}  # fmt: skip


def get_gpu(name: str) -> GpuSpec:
    """Look up a GPU of :data:`GPUS` by name (case-insensitive)."""
    for key, spec in GPUS.items():
        if key.lower() == str(name).lower():
            return spec
    raise ConfigError(f"GPU {name!r} is not known: expected one of {', '.join(GPUS)}")


def _peak(gpu: GpuSpec, precision: Precision) -> float:
    precision = Precision(precision)
    if precision not in gpu.dense_tflops:
        raise ConfigError(f"GPU {gpu.name} has no {precision.value} tensor peak: expected bf16, fp16 or fp8")
    return gpu.dense_tflops[precision] * 1e12


def _at(est: CostEstimate, precision: Precision | None) -> CostEstimate:
    if precision is None or Precision(precision) is est.precision:
        return est
    return estimate(est.config, est.height, est.width, est.batch, est.steps, Precision(precision))


def floor_time(
    est: CostEstimate,
    gpu: GpuSpec,
    precision: Precision | None = None,
    *,
    per: str = "step",
    hoisted: bool = True,
) -> float:
    """Roofline floor in seconds: max(FLOP / peak, bytes / bandwidth).

    ``per="step"``: one step (hoisted: without the once-per-decode work). ``per="decode"``:
    steps x step floor + the floor of the once-per-decode work (hoisted), or steps x the
    un-hoisted step floor. ``precision`` defaults to the estimate's; bytes follow it.
    """
    est = _at(est, precision)
    peak, bw = _peak(gpu, est.precision), gpu.mem_bw_gbs * 1e9

    def roof(flop: float, nbytes: float) -> float:
        return max(flop / peak, nbytes / bw)

    step = roof(est.flops_per_step_hoisted, est.bytes_per_step)
    once = roof(est.flops.hoistable, est.bytes_once)
    full = roof(est.flops_per_step, est.bytes_per_step_unhoisted)
    if per == "step":
        return step if hoisted else full
    if per == "decode":
        return est.steps * step + once if hoisted else est.steps * full
    raise ConfigError(f"floor_time per={per!r}: expected 'step' or 'decode'")


def mfu(
    measured_seconds: float,
    est: CostEstimate,
    gpu: GpuSpec,
    precision: Precision | None = None,
    *,
    per: str = "step",
    hoisted: bool = True,
) -> float:
    """Model FLOP utilisation: estimated FLOP / (measured seconds x dense peak), in [0, 1] ideally."""
    if not measured_seconds > 0:
        raise ConfigError(f"mfu measured_seconds={measured_seconds!r}: expected a positive number")
    est = _at(est, precision)
    if per not in ("step", "decode"):
        raise ConfigError(f"mfu per={per!r}: expected 'step' or 'decode'")
    step = est.flops_per_step_hoisted if hoisted else est.flops_per_step
    flop = step if per == "step" else (est.flops_per_decode if hoisted else est.flops_per_decode_unhoisted)
    return flop / (measured_seconds * _peak(gpu, est.precision))


def _si(x: float, unit: str) -> str:
    prefixes = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"))
    scale, prefix = next((sp for sp in prefixes if x >= sp[0]), (1.0, ""))
    return f"{x / scale:.2f} {prefix}{unit}"


def render_markdown(
    backbone: Backbone | str,
    ckpt_type: CkptType | str | None,
    height: int,
    width: int,
    batch: int = 1,
    steps: int = 4,
) -> str:
    """Markdown report of :func:`estimate` for a preset and size (``pidtrt bench --estimate``)."""
    preset = get_preset(backbone, ckpt_type)
    precisions = (Precision.BF16, Precision.FP16, Precision.FP8)
    ests = {pr: estimate(preset.config, height, width, batch, steps, pr) for pr in precisions}
    e, f = ests[Precision.BF16], ests[Precision.BF16].flops
    lines = [
        f"### Cost estimate: {preset.name}, {width}x{height}, batch {batch}, {steps} steps",
        "",
        f"Image tokens L = {e.tokens}, text tokens T = {e.text_tokens}, parameters {e.params:,} "
        f"({e.params / 1e9:.3f} B).",
        "",
        "| Component (per step) | FLOP |",
        "|---|---|",
    ]
    for field in dataclasses.fields(f):
        lines.append(f"| {field.name} | {_si(getattr(f, field.name), 'FLOP')} |")
    lines += [
        f"| **step, hoisted** | **{_si(e.flops_per_step_hoisted, 'FLOP')}** |",
        f"| step, un-hoisted | {_si(e.flops_per_step, 'FLOP')} |",
        f"| once per decode (LQ adapter + caption) | {_si(f.hoistable, 'FLOP')} |",
        f"| **decode, hoisted** | **{_si(e.flops_per_decode, 'FLOP')}** |",
        f"| decode, un-hoisted | {_si(e.flops_per_decode_unhoisted, 'FLOP')} |",
        "",
        "| Precision | weights/step | activations/step | bytes/step | bytes/decode |",
        "|---|---|---|---|---|",
    ]
    for pr, x in ests.items():
        lines.append(
            f"| {pr.value} | {_si(x.weight_bytes_step, 'B')} | {_si(x.activation_bytes_step, 'B')} | "
            f"{_si(x.bytes_per_step, 'B')} | {_si(x.bytes_per_decode, 'B')} |"
        )
    head = " | ".join(f"{pr.value} step / decode (ms)" for pr in precisions)
    lines += ["", f"| Roofline floor (dense peak) | {head} |", "|---" * (1 + len(precisions)) + "|"]
    for gpu in GPUS.values():
        cells = " | ".join(
            f"{floor_time(ests[pr], gpu) * 1e3:.1f} / {floor_time(ests[pr], gpu, per='decode') * 1e3:.1f}"
            for pr in precisions
        )
        lines.append(f"| {gpu.name} | {cells} |")
    return "\n".join(lines) + "\n"
