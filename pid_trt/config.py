"""Frozen configuration types: the PiD net config, release presets, precisions.

Everything past the CLI speaks in these enums and dataclasses, never in raw strings.
Resolution buckets live in :mod:`pid_trt.buckets`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pid_trt.errors import ConfigError
from pid_trt.quoting import quote, quote_names


class Backbone(str, Enum):
    """The LDM whose latent is decoded (plus two CPU-sized stand-ins: tiny, small)."""

    FLUX = "flux"
    ZIMAGE = "zimage"
    ZIMAGE_TURBO = "zimage_turbo"
    FLUX2 = "flux2"
    SD3 = "sd3"
    SDXL = "sdxl"
    QWENIMAGE = "qwenimage"
    DINOV2 = "dinov2"
    SIGLIP = "siglip"
    TINY = "tiny"
    SMALL = "small"


class CkptType(str, Enum):
    """Released checkpoint family: ``2k`` or ``2kto4k`` (v1 for sd3/sdxl, v1.5 otherwise)."""

    K2 = "2k"
    K2TO4K = "2kto4k"


class GateType(str, Enum):
    """Sigma-aware latent-injection gate: one value per token, or per token and channel."""

    PER_TOKEN_PER_DIM = "sigma_aware_per_token_per_dim"
    PER_TOKEN = "sigma_aware_per_token"


class PaddingMode(str, Enum):
    """Padding of the 3x3 convolutions of the latent adapter."""

    ZEROS = "zeros"
    REPLICATE = "replicate"


class Precision(str, Enum):
    """Numeric precision of a graph / engine / torch run."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"


# Upstream ``PidNet`` keyword arguments that only matter for training (or are dead at
# inference); accepted by :meth:`NetConfig.from_upstream` and ignored.
_IGNORED_UPSTREAM = frozenset(
    {
        "repa_encoder_index",
        "zero_init_lq",
        "train_lq_proj_only",
        "lq_aux_rgb_head",
        "lq_aux_rgb_head_latent_block_idx",
        "num_text_blocks",
        "ed_compress_ratio",
        "ed_depth_per_stage",
        "ed_window_size",
        "ed_num_heads",
        "ed_hidden_size",
        "ed_use_token_shuffle",
    }
)

# Upstream arguments that must take one fixed value for the inference path we implement.
_FIXED_UPSTREAM: Mapping[str, Any] = {
    "lq_inject_mode": "controlnet",
    "lq_in_channels": 0,
    "rope_mode": "ntk_aware",
    "enable_ed": False,
}


@dataclass(frozen=True)
class NetConfig:
    """Shape-defining hyperparameters of the PiD network (inference path only).

    Field names follow upstream ``PidNet`` keyword arguments so that configs round-trip.
    Sizes are in channels / tokens / pixels as named.
    """

    hidden_size: int = 1536
    num_groups: int = 24
    patch_depth: int = 14
    patch_size: int = 16
    pixel_hidden_size: int = 16
    pixel_attn_hidden_size: int = 1152
    pixel_num_groups: int = 16
    pixel_depth: int = 2
    in_channels: int = 3
    txt_embed_dim: int = 2304
    txt_max_length: int = 300
    use_text_rope: bool = True
    text_rope_theta: float = 10000.0
    rope_ref_h: int = 1024
    rope_ref_w: int = 1024
    lq_latent_channels: int = 16
    lq_hidden_dim: int = 512
    lq_num_res_blocks: int = 4
    lq_latent_unpatchify_factor: int = 1
    lq_conv_padding_mode: PaddingMode = PaddingMode.ZEROS
    lq_gate_type: GateType = GateType.PER_TOKEN_PER_DIM
    lq_interval: int = 2
    sr_scale: int = 4
    latent_spatial_down_factor: int = 8
    pit_lq_inject: bool = False

    def __post_init__(self) -> None:
        positive = (
            "hidden_size", "num_groups", "patch_depth", "patch_size", "pixel_hidden_size",
            "pixel_attn_hidden_size", "pixel_num_groups", "pixel_depth", "in_channels",
            "txt_embed_dim", "txt_max_length", "rope_ref_h", "rope_ref_w",
            "lq_latent_channels", "lq_hidden_dim", "lq_latent_unpatchify_factor",
            "lq_interval", "sr_scale", "latent_spatial_down_factor",
        )  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"net config {name}={quote(value)}: expected a positive integer")
        if self.lq_num_res_blocks < 0:
            raise ConfigError(f"net config lq_num_res_blocks={self.lq_num_res_blocks}: expected >= 0")
        if self.hidden_size % self.num_groups:
            raise ConfigError(
                f"net config hidden_size={self.hidden_size} is not divisible by num_groups={self.num_groups}"
            )
        if self.pixel_attn_hidden_size % self.pixel_num_groups:
            raise ConfigError(
                f"net config pixel_attn_hidden_size={self.pixel_attn_hidden_size} is not divisible "
                f"by pixel_num_groups={self.pixel_num_groups}"
            )
        for name, head in (("num_groups", self.head_dim), ("pixel_num_groups", self.pixel_head_dim)):
            if head % 4:
                raise ConfigError(f"net config {name}: head size {head} must be a multiple of 4 (2-D RoPE)")
        if self.pixel_hidden_size % 4:
            raise ConfigError(
                f"net config pixel_hidden_size={self.pixel_hidden_size}: expected a multiple of 4 "
                "(2-D sin/cos position table)"
            )
        f = self.lq_latent_unpatchify_factor
        if self.lq_latent_channels % (f * f):
            raise ConfigError(
                f"net config lq_latent_channels={self.lq_latent_channels} is not divisible by "
                f"lq_latent_unpatchify_factor**2={f * f}"
            )
        if self.lq_hidden_dim % 4:
            raise ConfigError(
                f"net config lq_hidden_dim={self.lq_hidden_dim}: expected a multiple of 4 (GroupNorm)"
            )
        if (self.pixels_per_latent // f) % self.patch_size and self.patch_size % (
            self.pixels_per_latent // f
        ):
            raise ConfigError(
                "net config: pixels per latent cell "
                f"({self.latent_spatial_down_factor}*{self.sr_scale}/{f}) and patch_size={self.patch_size} "
                "must divide one another"
            )

    # ----------------------------------------------------------------- derived sizes
    @property
    def head_dim(self) -> int:
        """Head size of the MMDiT joint attention (64 for the releases)."""
        return self.hidden_size // self.num_groups

    @property
    def pixel_head_dim(self) -> int:
        """Head size of the PiT compacted attention (72 for the releases)."""
        return self.pixel_attn_hidden_size // self.pixel_num_groups

    @property
    def mlp_hidden(self) -> int:
        """SwiGLU hidden width of the MMDiT blocks: int(2 * 4 * hidden / 3)."""
        return int(2 * (4 * self.hidden_size) / 3)

    @property
    def num_lq_outputs(self) -> int:
        """Number of latent-feature injections into the MMDiT trunk."""
        return (self.patch_depth + self.lq_interval - 1) // self.lq_interval

    @property
    def pixels_per_latent(self) -> int:
        """Output pixels per latent cell along one axis (down factor x sr scale)."""
        return self.latent_spatial_down_factor * self.sr_scale

    @property
    def lq_conv_in_channels(self) -> int:
        """Channels entering the first latent-adapter conv (after the optional unpatchify)."""
        f = self.lq_latent_unpatchify_factor
        return self.lq_latent_channels // (f * f)

    def output_size(self, latent_h: int, latent_w: int) -> tuple[int, int]:
        """Output (H, W) in pixels for a latent of (latent_h, latent_w) cells."""
        return latent_h * self.pixels_per_latent, latent_w * self.pixels_per_latent

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent (h, w) in cells for an output of (height, width) pixels."""
        p = self.pixels_per_latent
        if height % p or width % p:
            raise ConfigError(
                f"size {width}x{height}: expected width and height to be multiples of {p} "
                f"(latent down factor {self.latent_spatial_down_factor} x sr scale {self.sr_scale})"
            )
        return height // p, width // p

    # ----------------------------------------------------------------- conversion
    @classmethod
    def from_upstream(cls, kwargs: Mapping[str, Any]) -> NetConfig:
        """Build from upstream ``PidNet`` keyword arguments.

        Training-only arguments are ignored; unknown ones and values this inference path does
        not implement raise :class:`ConfigError` naming the argument.
        """
        if not isinstance(kwargs, Mapping):
            raise ConfigError(
                f"net config: expected a JSON object of PidNet arguments, got {type(kwargs).__name__}"
            )
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        unknown = []
        for key, value in kwargs.items():
            if key in _IGNORED_UPSTREAM:
                continue
            if key in _FIXED_UPSTREAM:
                if value != _FIXED_UPSTREAM[key]:
                    raise ConfigError(
                        f"net config {key}={quote(value)} is not supported: expected {_FIXED_UPSTREAM[key]!r}"
                    )
                continue
            if key not in fields:
                unknown.append(key)
                continue
            values[key] = value
        if unknown:
            raise ConfigError(f"net config has unknown argument(s) {quote_names(sorted(unknown))}")
        if "lq_conv_padding_mode" in values:
            values["lq_conv_padding_mode"] = _enum(
                PaddingMode, values["lq_conv_padding_mode"], "lq_conv_padding_mode"
            )
        if "lq_gate_type" in values:
            values["lq_gate_type"] = _enum(GateType, values["lq_gate_type"], "lq_gate_type")
        for name in ("use_text_rope", "pit_lq_inject"):
            if name in values and not isinstance(values[name], bool):
                raise ConfigError(f"net config {name}={quote(values[name])}: expected true or false")
        if "text_rope_theta" in values:
            theta = values["text_rope_theta"]
            if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
                raise ConfigError(f"net config text_rope_theta={quote(theta)}: expected a positive number")
            values["text_rope_theta"] = float(theta)
        return cls(**values)

    def to_upstream(self) -> dict[str, Any]:
        """Upstream ``PidNet`` keyword arguments (JSON-serialisable) that build this net."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Enum) else value
        out.update(_FIXED_UPSTREAM)
        return out

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) of :meth:`to_upstream`; stable for hashing."""
        return json.dumps(self.to_upstream(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> NetConfig:
        """Parse a JSON object of upstream ``PidNet`` arguments."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ConfigError(f"net config is not valid JSON ({exc})") from None
        return cls.from_upstream(data)


def _enum(kind: type[Enum], value: Any, name: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise ConfigError(
            f"net config {name}={quote(value)} is not supported: expected one of {allowed}"
        ) from None


# --------------------------------------------------------------------------- presets
_V1 = NetConfig()
_V15 = dataclasses.replace(
    _V1,
    lq_hidden_dim=1024,
    lq_conv_padding_mode=PaddingMode.REPLICATE,
    lq_gate_type=GateType.PER_TOKEN,
    pit_lq_inject=True,
    rope_ref_h=2048,
    rope_ref_w=2048,
)

# The golden "v1 tiny" config: every path of the real network at toy sizes.
TINY = NetConfig(
    hidden_size=64,
    num_groups=4,
    patch_depth=4,
    pixel_hidden_size=8,
    pixel_attn_hidden_size=64,
    pixel_num_groups=4,
    pixel_depth=2,
    txt_embed_dim=32,
    txt_max_length=8,
    lq_latent_channels=16,
    lq_hidden_dim=32,
)

# CPU-sized stand-in for timing: the real head sizes (64 / 72) and pixel width (16),
# the real text length and width, few blocks.
SMALL = dataclasses.replace(
    _V1,
    hidden_size=384,
    num_groups=6,
    patch_depth=4,
    pixel_attn_hidden_size=288,
    pixel_num_groups=4,
    pixel_depth=2,
    lq_hidden_dim=128,
)


@dataclass(frozen=True)
class Preset:
    """A named net config: a released checkpoint, or a CPU stand-in.

    ``experiment`` is the upstream checkpoint directory (``checkpoints/<experiment>/
    model_ema_bf16.pth``); ``None`` for the stand-ins, which have no released weights.
    """

    backbone: Backbone
    ckpt_type: CkptType
    config: NetConfig
    experiment: str | None

    @property
    def name(self) -> str:
        """Short name, e.g. ``flux-2k`` or ``tiny``."""
        if self.experiment is None:
            return self.backbone.value
        return f"{self.backbone.value}-{self.ckpt_type.value}"

    @property
    def released(self) -> bool:
        """True when NVIDIA publishes weights for this preset."""
        return self.experiment is not None


def _latent(base: NetConfig, channels: int, down: int, unpatchify: int = 1, sr: int = 4) -> NetConfig:
    return dataclasses.replace(
        base,
        lq_latent_channels=channels,
        latent_spatial_down_factor=down,
        lq_latent_unpatchify_factor=unpatchify,
        sr_scale=sr,
    )


_FLUX_2K = ("PiD_res2k_sr4x_official_flux_distill_4step", _latent(_V1, 16, 8))
_FLUX_4K = ("PiD_v1pt5_res2kto4k_sr4x_official_flux_distill_4step", _latent(_V15, 16, 8))

_RELEASED: dict[tuple[Backbone, CkptType], tuple[str, NetConfig]] = {
    (Backbone.FLUX, CkptType.K2): _FLUX_2K,
    (Backbone.FLUX, CkptType.K2TO4K): _FLUX_4K,
    # Z-Image and Z-Image-Turbo use the Flux.1 VAE and share the flux checkpoints.
    (Backbone.ZIMAGE, CkptType.K2): _FLUX_2K,
    (Backbone.ZIMAGE, CkptType.K2TO4K): _FLUX_4K,
    (Backbone.ZIMAGE_TURBO, CkptType.K2): _FLUX_2K,
    (Backbone.ZIMAGE_TURBO, CkptType.K2TO4K): _FLUX_4K,
    (Backbone.FLUX2, CkptType.K2): ("PiD_res2k_sr4x_official_flux2_distill_4step", _latent(_V1, 128, 16)),
    (Backbone.FLUX2, CkptType.K2TO4K): (
        "PiD_v1pt5_res2kto4k_sr4x_official_flux2_distill_4step",
        _latent(_V15, 128, 16, unpatchify=2),
    ),
    (Backbone.SD3, CkptType.K2): ("PiD_res2k_sr4x_official_sd3_distill_4step", _latent(_V1, 16, 8)),
    (Backbone.SD3, CkptType.K2TO4K): ("PiD_res2kto4k_sr4x_official_sd3_distill_4step", _latent(_V1, 16, 8)),
    (Backbone.SDXL, CkptType.K2TO4K): ("PiD_res2kto4k_sr4x_official_sdxl_distill_4step", _latent(_V1, 4, 8)),
    (Backbone.QWENIMAGE, CkptType.K2TO4K): (
        "PiD_v1pt5_res2kto4k_sr4x_official_qwenimage_distill_4step",
        _latent(_V15, 16, 8),
    ),
    (Backbone.DINOV2, CkptType.K2): ("PiD_res2k_sr4x_official_dinov2_distill_4step", _latent(_V1, 768, 16)),
    (Backbone.SIGLIP, CkptType.K2): (
        "PiD_res2k_sr8x_official_siglip_distill_4step",
        _latent(_V1, 1152, 16, sr=8),
    ),
}

_STANDINS = {Backbone.TINY: TINY, Backbone.SMALL: SMALL}


def default_ckpt_type(backbone: Backbone) -> CkptType:
    """The checkpoint type used when the user names none: ``2k`` where it exists."""
    if (backbone, CkptType.K2) in _RELEASED or backbone in _STANDINS:
        return CkptType.K2
    return CkptType.K2TO4K


def get_preset(backbone: Backbone | str, ckpt_type: CkptType | str | None = None) -> Preset:
    """Look up a preset by backbone and checkpoint type (``None`` = the default type)."""
    backbone = _enum_arg(Backbone, backbone, "backbone")
    if backbone in _STANDINS:
        return Preset(backbone, CkptType.K2, _STANDINS[backbone], None)
    ckpt = default_ckpt_type(backbone) if ckpt_type is None else _enum_arg(CkptType, ckpt_type, "ckpt-type")
    if (backbone, ckpt) not in _RELEASED:
        have = [c.value for c in CkptType if (backbone, c) in _RELEASED]
        raise ConfigError(
            f"backbone {backbone.value!r} has no {ckpt.value!r} checkpoint: expected ckpt-type {' or '.join(have)}"
        )
    experiment, config = _RELEASED[(backbone, ckpt)]
    return Preset(backbone, ckpt, config, experiment)


def all_presets() -> list[Preset]:
    """Every released preset, then the stand-ins."""
    out = [get_preset(b, c) for (b, c) in _RELEASED]
    out += [get_preset(b) for b in _STANDINS]
    return out


def _enum_arg(kind: type[Enum], value: Any, name: str) -> Any:
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise ConfigError(f"{name} {value!r} is not known: expected one of {allowed}") from None
