"""Image -> PiD latent for the representation-autoencoder backbones, dinov2 and siglip.

``pid/ARCHITECTURE.md`` §2.3 and upstream's tokenizers (``tokenizers/dinov2_vae.py``,
``tokenizers/scale_rae_vae.py``), step by step, for an image x [B, 3, H, W] in [-1, 1]:

| step               | dinov2 (RAE)                                 | siglip (Scale-RAE)                           |
|--------------------|----------------------------------------------|----------------------------------------------|
| to [0, 1]          | (x + 1) / 2                                  | (x + 1) / 2                                  |
| resize (float32)   | bicubic to 448 x 448 (32 patches of 14)      | bicubic + antialias to 224 x 224 (16 of 14)  |
| normalise          | (x - image_mean) / image_std of the folder's | the same (SigLIP: 0.5 / 0.5)                 |
|                    | image processor (ImageNet)                   |                                              |
| vision tower       | Dinov2WithRegistersModel, final ``layernorm``| SigLIP vision tower, ``post_layernorm``      |
|                    | without its affine (weight, bias dropped)    | removed                                      |
| tokens             | last_hidden_state minus 1 CLS + R registers  | last_hidden_state (no special tokens), then  |
|                    |                                              | affine-free LayerNorm over channels, eps 1e-6|
| grid               | [B, 768, 32, 32]                             | [B, 1152, 16, 16]                            |
| latent norm        | (z - mean) / sqrt(var + 1e-5), per (C, H, W),| none                                         |
|                    | RAE's ImageNet statistics (``stat.pt``)      |                                              |

The resize is skipped when the image already has the encoder's input size; any aspect ratio
is resized to the square input (as upstream: the grid is fixed, PiD decodes it to 2048²).
Upstream's ``from_clean`` runs the image, the tower and the latent in bfloat16 on CUDA; here
the computation is float32 unless ``dtype=torch.bfloat16`` is asked for (the resize, the
normalisations and the latent are float32 either way, as upstream).

Refused (one-line errors, before any weight is read where possible): a folder of another
model (``config.json``'s ``model_type``), an encoder whose width or grid does not give the
PiD net's latent, a statistics file that is missing, unreadable, executable pickle code, or
without ``mean`` / ``var`` of the latent's shape, and an image that cannot hold one patch
(14 pixels a side). An image smaller than the encoder's input is resized up to it as
upstream's encode does (bicubic; SigLIP with antialias), with a one-line warning.

The statistics file is upstream's ``torch.save`` dict (read with ``torch.load(...,
weights_only=True)``: tensors and plain containers only, no code) or a safetensors file with
``mean`` and ``var`` tensors. ``transformers`` is imported only when an encoder is loaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pid_trt.config import Backbone, get_preset
from pid_trt.errors import BackendUnavailableError, ConfigError, InputFileError
from pid_trt.integrations.rae_stats import STATS_KEYS, RaeStats, read_rae_stats

log = logging.getLogger("pid_trt.integrations.rae_encoders")  # the CLI shows pid_trt's lines on stderr


@dataclass(frozen=True)
class RaeRecipe:
    """One backbone's encoder recipe (see the module table).

    backbone: the PiD preset family; title: the encoder, for messages; model_types: the
    ``config.json`` model types accepted; grid: latent cells a side (the input is grid x
    patch_size pixels a side); antialias: the resize's low-pass filter; token_norm_eps: the
    affine-free LayerNorm over channels after the tower (None: none); stats_eps: the latent
    normalisation's epsilon (None: no statistics); example: the released encoder's name.
    """

    backbone: Backbone
    title: str
    model_types: tuple[str, ...]
    grid: int
    antialias: bool
    token_norm_eps: float | None
    stats_eps: float | None
    example: str

    @property
    def channels(self) -> int:
        """Latent channels the PiD net of this backbone takes (768 / 1152)."""
        return get_preset(self.backbone).config.lq_latent_channels

    @property
    def needs_stats(self) -> bool:
        return self.stats_eps is not None


RECIPES: dict[Backbone, RaeRecipe] = {
    Backbone.DINOV2: RaeRecipe(
        Backbone.DINOV2,
        "DINOv2 with registers",
        ("dinov2_with_registers",),
        grid=32,
        antialias=False,
        token_norm_eps=None,
        stats_eps=1e-5,
        example="facebook/dinov2-with-registers-base",
    ),
    Backbone.SIGLIP: RaeRecipe(
        Backbone.SIGLIP,
        "SigLIP-2",
        ("siglip", "siglip_vision_model"),
        grid=16,
        antialias=True,
        token_norm_eps=1e-6,
        stats_eps=None,
        example="google/siglip2-so400m-patch14-224",
    ),
}


def rae_recipe(backbone: str | Backbone) -> RaeRecipe:
    """The recipe of ``dinov2`` or ``siglip``; ConfigError for any other name."""
    key = backbone.value if isinstance(backbone, Backbone) else str(backbone).strip().lower()
    for recipe in RECIPES.values():
        if recipe.backbone.value == key:
            return recipe
    raise ConfigError(
        f"backbone {backbone!r} has no representation encoder: expected one of "
        f"{', '.join(b.value for b in RECIPES)}"
    )


def is_rae_backbone(backbone: str | Backbone) -> bool:
    """True for the backbones encoded by a representation encoder (dinov2, siglip)."""
    key = backbone.value if isinstance(backbone, Backbone) else str(backbone).strip().lower()
    return any(r.backbone.value == key for r in RECIPES.values())


@dataclass(frozen=True)
class RaeEncoderSpec:
    """What an encoder folder's ``config.json`` says, checked against the recipe (no weights
    read): patch_size, hidden_size, special tokens dropped (DINOv2: 1 CLS + registers;
    SigLIP: 0) and the input size (grid x patch_size pixels a side)."""

    recipe: RaeRecipe
    path: Path
    model_type: str
    patch_size: int
    hidden_size: int
    special_tokens: int

    @property
    def input_size(self) -> int:
        return self.recipe.grid * self.patch_size


def _require_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the dinov2 / siglip encoders need transformers, which is not installed ({exc}): "
            "pip install 'pid-trt[diffusers]'"
        ) from None
    return transformers


def read_encoder_spec(directory: str | os.PathLike[str], backbone: str | Backbone) -> RaeEncoderSpec:
    """Check a local encoder folder against ``backbone``'s recipe from its ``config.json``:
    the model type, the width (the PiD net's latent channels) and, for SigLIP, that its
    position grid is the recipe's (224 pixels of patch 14). ConfigError naming the folder."""
    recipe = rae_recipe(backbone)
    root = Path(directory)
    expected = f"expected a {recipe.title} folder such as {recipe.example}"
    if not root.is_dir():
        raise ConfigError(f"encoder {root}: not a directory ({expected})")
    try:
        raw = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"encoder {root}: no config.json ({expected})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"encoder {root}: config.json cannot be read ({exc}; {expected})") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in recipe.model_types:
        raise ConfigError(
            f"encoder {root} is a {model_type!r} model (config.json model_type): --backbone "
            f"{recipe.backbone.value} needs {' or '.join(map(repr, recipe.model_types))} ({expected})"
        )
    _require_transformers()
    from transformers import AutoConfig

    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(root, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise ConfigError(
            f"encoder {root}: config.json is not a valid {model_type} config ({first})"
        ) from None
    vision = getattr(config, "vision_config", None) or config
    patch, hidden = int(vision.patch_size), int(vision.hidden_size)
    if hidden != recipe.channels:
        raise ConfigError(
            f"encoder {root}: hidden_size {hidden}, but the {recipe.backbone.value} PiD takes "
            f"{recipe.channels}-channel latents ({expected})"
        )
    spec = RaeEncoderSpec(
        recipe,
        root,
        model_type,
        patch,
        hidden,
        special_tokens=1 + int(getattr(vision, "num_register_tokens", 0) or 0)
        if recipe.backbone is Backbone.DINOV2
        else 0,
    )
    if recipe.backbone is Backbone.SIGLIP and int(vision.image_size) != spec.input_size:
        raise ConfigError(
            f"encoder {root}: a {vision.image_size}-pixel SigLIP with patch {patch}; the Scale-RAE recipe "
            f"runs it at {spec.input_size} pixels ({recipe.grid}x{recipe.grid} patches), so its "
            f"image_size must be {spec.input_size} ({expected})"
        )
    return spec


def check_stats(spec: RaeEncoderSpec, stats: RaeStats | None) -> None:
    """ConfigError unless ``stats`` is given exactly when the recipe has statistics, and each
    of mean / var broadcasts to the latent's [C, grid, grid] (at most 3 dims)."""
    recipe = spec.recipe
    if not recipe.needs_stats:
        if stats is not None:
            raise ConfigError(
                f"backbone {recipe.backbone.value} takes no latent statistics ({recipe.title} latents are "
                "normalised per token, not by RAE statistics)"
            )
        return
    if stats is None:
        raise ConfigError(
            f"backbone {recipe.backbone.value} needs RAE latent statistics (mean, var; upstream's "
            "checkpoints/rae/stats/dinov2/wReg_base/imagenet1k_512/stat.pt)"
        )
    shape = (spec.hidden_size, recipe.grid, recipe.grid)
    for name in STATS_KEYS:
        t = getattr(stats, name)
        ok = t.dim() <= 3
        if ok:
            try:
                ok = torch.broadcast_shapes(t.shape, shape) == shape
            except RuntimeError:
                ok = False
        if not ok:
            raise ConfigError(
                f"statistics file {stats.source}: {name} is {list(t.shape)}, expected {list(shape)} "
                f"(the latent's channels, rows, columns) or a shape that broadcasts to it"
            )


class RaeEncoder:
    """A loaded representation encoder: :meth:`encode` maps images to PiD latents.

    Build it with :func:`load_rae_encoder`. Attributes: ``spec`` (:class:`RaeEncoderSpec`),
    ``model`` (the transformers vision tower, final norm's affine removed), ``image_mean`` /
    ``image_std`` [1, 3, 1, 1] float32, ``stats`` (:class:`RaeStats` or None), ``device``,
    ``dtype`` (the tower's).
    """

    def __init__(
        self,
        spec: RaeEncoderSpec,
        model: Any,
        image_mean: torch.Tensor,
        image_std: torch.Tensor,
        stats: RaeStats | None,
        device: torch.device,
        dtype: torch.dtype,
    ):
        check_stats(spec, stats)
        self.spec = spec
        self.model = model
        self.image_mean = image_mean.to(device, torch.float32).view(1, 3, 1, 1)
        self.image_std = image_std.to(device, torch.float32).view(1, 3, 1, 1)
        self.stats = stats
        self.device = device
        self.dtype = dtype

    @property
    def backbone(self) -> Backbone:
        return self.spec.recipe.backbone

    def check_image_size(self, width: int, height: int, what: str = "image") -> str | None:
        """:func:`check_image_size` of this encoder."""
        return check_image_size(self.spec, width, height, what)

    @torch.no_grad()
    def encode(self, image: Any, what: str | None = None) -> torch.Tensor:
        """PiD latent [B, C, grid, grid] float32 on the CPU of ``image``: a file path (loaded
        as upstream's from_clean does, centre-cropped to multiples of 16) or a tensor
        [B, 3, H, W] / [3, H, W] in [-1, 1]; ``what`` names it in messages."""
        from pid_trt.integrations.vae import image_batch

        x = image_batch(image)
        what = what or (f"image {os.fspath(image)}" if isinstance(image, (str, os.PathLike)) else "image")
        notice = self.check_image_size(int(x.shape[-1]), int(x.shape[-2]), what)
        if notice:
            log.warning(notice)
        recipe, size = self.spec.recipe, self.spec.input_size
        x = (x.to(self.device, torch.float32) + 1.0) / 2.0
        if tuple(x.shape[-2:]) != (size, size):
            x = torch.nn.functional.interpolate(
                x, size=(size, size), mode="bicubic", align_corners=False, antialias=recipe.antialias
            )
        x = (x - self.image_mean) / self.image_std
        tokens = self.model(pixel_values=x.to(self.dtype)).last_hidden_state[:, self.spec.special_tokens :]
        if recipe.token_norm_eps is not None:
            tokens = torch.nn.functional.layer_norm(
                tokens.float(), (tokens.shape[-1],), eps=recipe.token_norm_eps
            )
        b, n, c = tokens.shape
        if n != recipe.grid * recipe.grid:
            raise ConfigError(
                f"encoder {self.spec.path}: {n} patch tokens after dropping {self.spec.special_tokens} "
                f"special ones, expected {recipe.grid}x{recipe.grid}"
            )
        z = tokens.float().transpose(1, 2).reshape(b, c, recipe.grid, recipe.grid)
        if self.stats is not None:
            mean = self.stats.mean.to(z.device)
            var = self.stats.var.to(z.device)
            z = (z - mean) / torch.sqrt(var + recipe.stats_eps)
        return z.cpu()


def check_image_size(spec: RaeEncoderSpec, width: int, height: int, what: str = "image") -> str | None:
    """InputFileError when a ``width`` x ``height`` image cannot hold one patch (14 px a side);
    for one smaller than the encoder's input (DINOv2-B/14: 448, SigLIP-2/14: 224), resized up
    to it as upstream does, the one-line warning to show; else None."""
    size, patch = spec.input_size, spec.patch_size
    if width < patch or height < patch:
        raise InputFileError(
            f"{what} is {width}x{height}, too small for the {spec.recipe.title} encoder: expected at least "
            f"{patch} pixels a side (one {patch}x{patch} patch; its input is {size}x{size})"
        )
    if width < size or height < size:
        return (
            f"warning: {what} is {width}x{height}, smaller than the {spec.recipe.title} encoder's {size}x{size} "
            f"input: resized up to it (bicubic, as upstream); fine detail is made up, not seen"
        )
    return None


def _processor_stats(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(root, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise ConfigError(
            f"encoder {root}: no usable image processor (preprocessor_config.json: {first})"
        ) from None
    mean, std = getattr(proc, "image_mean", None), getattr(proc, "image_std", None)
    try:
        m = torch.tensor(mean, dtype=torch.float32).reshape(3)
        s = torch.tensor(std, dtype=torch.float32).reshape(3)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(
            f"encoder {root}: image processor has image_mean={mean!r}, image_std={std!r}, expected 3 numbers each"
        ) from None
    if not bool(torch.isfinite(m).all() and torch.isfinite(s).all() and (s > 0).all()):
        raise ConfigError(f"encoder {root}: image processor has image_std={std!r}, expected positive numbers")
    return m, s


def load_rae_encoder(
    directory: str | os.PathLike[str],
    backbone: str | Backbone,
    stats: RaeStats | str | os.PathLike[str] | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> RaeEncoder:
    """Load the ``dinov2`` or ``siglip`` encoder from a local transformers folder (config.json,
    weights, preprocessor_config.json; nothing is downloaded) with transformers' own classes:
    ``Dinov2WithRegistersModel`` with its final ``layernorm``'s affine removed, or
    ``SiglipVisionModel`` (from a full SigLIP or a vision-only folder) with ``post_layernorm``
    removed. ``stats``: the dinov2 latent statistics (a :class:`RaeStats` or its file), required
    for dinov2 and refused for siglip. Checks run before the weights are read."""
    spec = read_encoder_spec(directory, backbone)
    if stats is not None and not isinstance(stats, RaeStats):
        stats = read_rae_stats(stats)
    check_stats(spec, stats)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ConfigError(f"encoder dtype {dtype}: expected torch.float32, bfloat16 or float16")
    dev = torch.device(device)
    import transformers
    from safetensors import SafetensorError

    cls_name = "Dinov2WithRegistersModel" if spec.recipe.backbone is Backbone.DINOV2 else "SiglipVisionModel"
    cls = getattr(transformers, cls_name)
    # Quiet: a full SigLIP folder's text weights are expected leftovers, and the image
    # processor's missing-torchvision notice does not concern its mean / std.
    with _quiet_transformers():
        mean, std = _processor_stats(spec.path)
        try:
            model = cls.from_pretrained(spec.path, local_files_only=True, dtype=dtype)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
            first = " ".join(str(exc).split())[:300]
            raise ConfigError(f"encoder {spec.path}: cannot be loaded as a {cls_name} ({first})") from None
    _remove_final_norm_affine(model, spec)
    model = model.to(dev).eval().requires_grad_(False)
    return RaeEncoder(spec, model, mean, std, stats, dev, dtype)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' logging at error level and no progress bar, restored afterwards."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _remove_final_norm_affine(model: Any, spec: RaeEncoderSpec) -> None:
    """DINOv2: the final LayerNorm normalises without weight / bias; SigLIP: ``post_layernorm``
    becomes the identity (the recipe's own affine-free LayerNorm follows the tower) and the
    attention-pooling head, which only makes ``pooler_output``, is dropped."""
    if spec.recipe.backbone is Backbone.DINOV2:
        norm = model.layernorm
        norm.elementwise_affine = False
        norm.weight = None
        norm.bias = None
        return
    tower = getattr(model, "vision_model", model)  # transformers < 5 nests the tower
    tower.post_layernorm = torch.nn.Identity()
    if getattr(tower, "use_head", False):  # the pooled output is no part of the recipe
        tower.use_head = False
        tower.head = None


def encode_image_rae(
    encoder: RaeEncoder, image: Any, degrade_sigma: float = 0.0, seed: int = 0
) -> tuple[torch.Tensor, float]:
    """Encode ``image`` (see :meth:`RaeEncoder.encode`) and noise the latent to
    ``degrade_sigma`` in the flow form (1 - s) z + s e, as upstream's from_clean for these
    backbones (e from a CPU generator seeded with ``seed``). Returns (latent [B, C, h, w]
    float32 on the CPU, degrade_sigma)."""
    from pid_trt.integrations.vae import noise_latent

    sigma = float(degrade_sigma)
    if not 0.0 <= sigma <= 1.0 or math.isnan(sigma):
        raise ConfigError(f"degrade sigma {sigma!r}: expected a value in [0, 1]")
    latent = encoder.encode(image)
    return noise_latent(latent, sigma, seed).float(), sigma
