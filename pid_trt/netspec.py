"""What the user asked for, resolved: a net config, where its weights come from, the model.

The one place model options (``--backbone``, ``--ckpt-type``, ``--checkpoint``,
``--net-config``, ``--random-weights``) turn into a config and weights, for the CLI and for
:class:`pid_trt.Decoder` alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pid_trt.config import NetConfig, Preset, get_preset
from pid_trt.errors import ConfigError

WEIGHTS_HINT = (
    'get the released weights with `hf download nvidia/PiD --include "checkpoints/*"` '
    "(NVIDIA non-commercial licence) and pass --checkpoint, or pass --random-weights"
)


@dataclass(frozen=True)
class NetSpec:
    """What the user asked for: a net config, where its weights come from, and a name.

    ``checkpoint`` is None exactly when ``random_weights`` is True.
    """

    config: NetConfig
    preset: Preset | None
    checkpoint: Path | None
    random_weights: bool
    weights_seed: int = 0

    @property
    def name(self) -> str:
        if self.preset is not None:
            return self.preset.name
        return "custom"

    @property
    def released_preset(self) -> bool:
        return self.preset is not None and self.preset.released

    @property
    def needs_caption(self) -> bool:
        """The caption rule: a real checkpoint, or a released preset's architecture, needs a
        caption embedding; only a random-weight stand-in of another net gets a seeded random one
        (:func:`stand_in_caption`)."""
        return self.released_preset or not self.random_weights


def stand_in_caption(spec: NetSpec, batch: int, seed: int):
    """[batch, T, D] float32 seeded random caption for a net that needs none (see
    :attr:`NetSpec.needs_caption`); raises InputFileError (one line) for one that does."""
    import torch

    from pid_trt.errors import InputFileError

    config = spec.config
    if spec.needs_caption:
        raise InputFileError(
            f"no caption: pass caption_embedding [B, {config.txt_max_length}, {config.txt_embed_dim}] "
            "(Gemma-2-2B hidden states of the caption) or a prompt with a text encoder "
            "(see README, 'Caption embeddings')"
        )
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(batch, config.txt_max_length, config.txt_embed_dim, generator=gen)


def read_net_config(path: Path | Mapping[str, Any]) -> NetConfig:
    if isinstance(path, Mapping):
        return NetConfig.from_upstream(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"--net-config {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--net-config {path}: cannot read ({exc})") from None
    return NetConfig.from_json(text)


def _config_from_checkpoint(path: Path) -> NetConfig:
    """The net config stored in a converted checkpoint's metadata (``pidtrt convert``)."""
    from pid_trt.checkpoints import CONFIG_METADATA_KEY
    from pid_trt.errors import CheckpointError
    from pid_trt.safetensors_header import read_header

    hint = "pass --backbone NAME or --net-config FILE (or convert it with `pidtrt convert`)"
    with open(path, "rb") as f:
        magic = f.read(8)
    if len(magic) < 8 or magic.startswith(b"PK") or magic[:1] == b"\x80":
        raise ConfigError(f"--checkpoint {path} is a pickled .pth, which carries no net config: {hint}")
    text = read_header(path, error=CheckpointError).metadata.get(CONFIG_METADATA_KEY)
    if text is None:
        raise ConfigError(f"--checkpoint {path} carries no net config in its metadata: {hint}")
    return NetConfig.from_json(text)


def resolve_net(
    backbone: str | None,
    ckpt_type: str | None,
    checkpoint: Path | None,
    net_config: Path | Mapping[str, Any] | None,
    random_weights: bool,
    weights_seed: int = 0,
) -> NetSpec:
    """Turn the model options (CLI or :meth:`pid_trt.Decoder.load`) into a :class:`NetSpec`
    (raises ConfigError when they are contradictory or incomplete). ``net_config``: a JSON
    file of upstream ``PidNet`` keyword arguments, or those arguments as a mapping."""
    if checkpoint is not None and random_weights:
        raise ConfigError("--checkpoint and --random-weights exclude each other: pass one")
    preset = None
    config = None
    if backbone is not None:
        preset = get_preset(backbone, ckpt_type)
        config = preset.config
        if net_config is not None:
            raise ConfigError("--backbone and --net-config exclude each other: a preset fixes the net config")
    elif ckpt_type is not None:
        raise ConfigError("--ckpt-type needs --backbone")
    elif net_config is not None:
        config = read_net_config(net_config)
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise ConfigError(f"--checkpoint {checkpoint}: file not found")
        if config is None:
            config = _config_from_checkpoint(checkpoint)
    elif not random_weights:
        raise ConfigError(f"no weights given: {WEIGHTS_HINT}")
    if config is None:
        raise ConfigError("no net config: pass --backbone NAME (or --net-config JSON with --random-weights)")
    return NetSpec(config, preset, checkpoint, random_weights, weights_seed)


def build_model(spec: NetSpec):
    """The torch reference :class:`~pid_trt.model.PidNet` with the spec's weights (fp32, CPU)."""
    import torch

    from pid_trt.model import PidNet, random_init

    # Build on the meta device and materialise uninitialised storage: every parameter is then
    # written by random_init or the checkpoint, so torch's default init (seconds at full size)
    # is skipped.
    with torch.device("meta"):
        model = PidNet(spec.config)
    model = model.to_empty(device="cpu")
    if spec.random_weights:
        random_init(model, seed=spec.weights_seed)
    else:
        from pid_trt.checkpoints import load_checkpoint, load_into

        loaded = load_checkpoint(spec.checkpoint, spec.config)
        load_into(model, loaded)
    return model.eval()
