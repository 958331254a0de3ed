"""Strict loading of PiD checkpoints (.pth / .safetensors) and conversion to safetensors.

Formats read:

* the released ``model_ema_bf16.pth``: a ``torch.save`` of a flat dict ``net.<name>`` →
  bf16 tensor. Read only with ``torch.load(weights_only=True)``; anything pickled other
  than tensors and plain containers is refused and never executed.
* ``.safetensors`` with or without the ``net.`` prefix. The header is validated against
  the file size first (:mod:`pid_trt.safetensors_header`); the net config may travel in
  the metadata key :data:`CONFIG_METADATA_KEY` (what :func:`convert_checkpoint` writes).

Loading is strict: every key and shape of the net config, nothing more, nothing less.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pid_trt.atomic import atomic_write
from pid_trt.config import NetConfig
from pid_trt.errors import CheckpointError, ConfigError
from pid_trt.quoting import printable, quote
from pid_trt.safetensors_header import FLOAT_DTYPES, read_header

if TYPE_CHECKING:
    import torch

#: Safetensors metadata key holding the net config JSON (:meth:`NetConfig.to_json`).
CONFIG_METADATA_KEY = "pid_net_config"
#: Safetensors metadata key / value identifying files written by :func:`convert_checkpoint`.
FORMAT_METADATA_KEY = "format"
FORMAT_VERSION = "pid-trt/1"
#: Prefix of the released checkpoints' keys (the ``net`` attribute of the upstream model).
PREFIX = "net."

_TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
_SHOW = 3  # names listed per category in a mismatch message
_HASH_CHUNK = 1 << 20  # bytes
_FLOAT_EXPECTED = "expected floating-point weights"


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint that matched its net config exactly.

    ``state_dict`` maps module names (no ``net.`` prefix) to CPU tensors in the file's own
    dtypes (bf16 for the releases); ``sha256`` is the hex digest of the file's bytes;
    ``dtypes`` counts tensors per dtype name (e.g. ``{"bfloat16": 456}``).
    """

    path: Path
    state_dict: Mapping[str, torch.Tensor]
    config: NetConfig
    sha256: str
    dtypes: Mapping[str, int]

    @property
    def num_params(self) -> int:
        """Total number of scalar parameters."""
        return sum(t.numel() for t in self.state_dict.values())

    def dtype_summary(self) -> str:
        """One line, e.g. ``bfloat16 x456``."""
        return ", ".join(f"{name} x{count}" for name, count in sorted(self.dtypes.items()))


def expected_shapes(config: NetConfig) -> dict[str, tuple[int, ...]]:
    """Key → shape of the state dict of ``PidNet(config)`` (built on the meta device)."""
    return dict(_expected_shapes(config))


@functools.lru_cache(maxsize=16)
def _expected_shapes(config: NetConfig) -> Mapping[str, tuple[int, ...]]:
    import torch

    from pid_trt.model import PidNet

    with torch.device("meta"):
        model = PidNet(config)
    return MappingProxyType({name: tuple(t.shape) for name, t in model.state_dict().items()})


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, streamed in 1 MiB chunks; remembered per (path, size, mtime)
    so a process that keys many exports / engines on one 3 GB checkpoint hashes it once."""
    st = os.stat(path)
    return _sha256_of(os.path.realpath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def load_checkpoint(path: str | os.PathLike[str], config: NetConfig | None = None) -> LoadedCheckpoint:
    """Load ``path`` strictly against ``config`` (or the config in the file's metadata).

    Raises :class:`CheckpointError` (one line) when the file is unsafe or malformed, holds
    non-floating tensors, carries no config and none is given, carries a config that
    differs from ``config``, or when any key is missing, unexpected or mis-shaped.
    """
    path = Path(path)
    try:
        is_file = path.is_file()
    except OSError as exc:  # a name too long for the file system, a permission denied on the way
        raise CheckpointError(
            f"checkpoint {printable(path)}: cannot be read ({exc.strerror or exc})"
        ) from None
    if not is_file:
        raise CheckpointError(
            f"checkpoint {printable(path)} does not exist or is not a file: expected a .pth or .safetensors"
        )
    label = f"checkpoint {printable(path.name)}"
    if _is_safetensors(path):
        # Check names, dtypes and shapes from the validated header before reading any data.
        header = read_header(path, error=CheckpointError)
        for entry in header.entries:
            if entry.dtype not in FLOAT_DTYPES:
                raise CheckpointError(
                    f"{label}: tensor {quote(entry.name)} has dtype {entry.dtype}: {_FLOAT_EXPECTED}"
                )
        shapes = _strip_prefix({e.name: e.shape for e in header.entries}, path)
        config = _resolve_config(path, config, header.metadata)
        check_shapes(shapes, config, label)
        state = _strip_prefix(_load_safetensors(path), path)
    else:
        state = _strip_prefix(_read_torch(path), path)
        for name, tensor in state.items():
            if not tensor.is_floating_point():
                dtype = str(tensor.dtype).removeprefix("torch.")
                raise CheckpointError(f"{label}: tensor {quote(name)} has dtype {dtype}: {_FLOAT_EXPECTED}")
        config = _resolve_config(path, config, {})
    # Always re-checked on the tensors themselves (a safetensors file may change after its header was read).
    check_shapes({k: tuple(t.shape) for k, t in state.items()}, config, label)
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in state.values())
    return LoadedCheckpoint(path, state, config, file_sha256(path), dict(dtypes))


def check_shapes(shapes: Mapping[str, tuple[int, ...]], config: NetConfig, label: str = "checkpoint") -> None:
    """Raise one-line :class:`CheckpointError` unless ``shapes`` (key → shape) equals the config's.

    The message gives the count and the first few names of missing, unexpected and
    mis-shaped keys.
    """
    want = expected_shapes(config)
    missing = sorted(k for k in want if k not in shapes)
    unexpected = sorted(k for k in shapes if k not in want)
    wrong = sorted(k for k in shapes if k in want and tuple(shapes[k]) != want[k])
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_names(unexpected)})")
    if wrong:
        shown = ", ".join(
            f"{printable(k, 80)} {list(shapes[k])} expected {list(want[k])}" for k in wrong[:_SHOW]
        )
        parts.append(f"{len(wrong)} wrong shape ({shown}{', ...' if len(wrong) > _SHOW else ''})")
    raise CheckpointError(
        f"{label} does not match the net config ({len(want)} keys): {'; '.join(parts)}; nothing was loaded"
    )


def convert_checkpoint(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], config: NetConfig | None = None
) -> LoadedCheckpoint:
    """Strictly load ``src`` and write it to ``dst`` as safetensors, atomically.

    Keys lose the ``net.`` prefix, dtypes are kept (bf16 stays bf16); metadata holds the
    net config JSON (:data:`CONFIG_METADATA_KEY`), :data:`FORMAT_METADATA_KEY` =
    :data:`FORMAT_VERSION` and the source file's SHA-256. Returns ``dst`` loaded back.
    """
    from safetensors.torch import save_file

    loaded = load_checkpoint(src, config)
    metadata = {
        CONFIG_METADATA_KEY: loaded.config.to_json(),
        FORMAT_METADATA_KEY: FORMAT_VERSION,
        "source_sha256": loaded.sha256,
    }
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in sorted(loaded.state_dict.items()):
        value = value.contiguous()
        ptr = value.untyped_storage().data_ptr()
        if ptr in seen:  # safetensors refuses tensors that share memory (tied or aliased weights)
            value = value.clone()
            ptr = value.untyped_storage().data_ptr()
        seen.add(ptr)
        tensors[key] = value
    with atomic_write(dst) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return load_checkpoint(dst, loaded.config)


def load_into(model: torch.nn.Module, loaded: LoadedCheckpoint) -> torch.nn.Module:
    """Copy ``loaded``'s weights into ``model`` (strict), cast to each parameter's dtype.

    Returns ``model``. Raises :class:`CheckpointError` when the model's keys or shapes
    differ from the checkpoint's.
    """
    target = model.state_dict()
    state = {k: v.to(target[k].dtype) if k in target else v for k, v in loaded.state_dict.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"checkpoint {printable(loaded.path.name)} does not fit the model: "
            f"{printable(' '.join(s.strip() for s in first), 400)}"
        ) from None
    return model


# --------------------------------------------------------------------------- readers
def _is_safetensors(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return True
    if suffix in _TORCH_SUFFIXES:
        return False
    with open(path, "rb") as fh:
        head = fh.read(9)
    return not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80") and head[8:9] == b"{"


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {printable(path.name)}: safetensors could not read it ({printable(exc)})"
        ) from None


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    import zipfile

    import torch

    mmap = zipfile.is_zipfile(path)  # mmap needs the zip format of torch.save
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
    except pickle.UnpicklingError as exc:
        detail = printable(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"refused: checkpoint {printable(path.name)} contains pickled code/objects other than tensors ({detail}); "
            "expected a flat dict of tensors"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure of a hostile file is a CheckpointError
        detail = printable(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
        raise CheckpointError(
            f"checkpoint {printable(path.name)} is not a readable torch.save file ({type(exc).__name__}: {detail})"
        ) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {printable(path.name)} holds a {type(obj).__name__}: expected a flat dict of name -> tensor"
        )
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {printable(path.name)}: entry {quote(key)} is a {type(value).__name__}: "
                "expected a flat dict of name -> tensor"
            )
    return dict(obj)


def _strip_prefix(raw: Mapping[str, Any], path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, tensor in raw.items():
        name = key.removeprefix(PREFIX)
        if name in out:
            raise CheckpointError(
                f"checkpoint {printable(path.name)} holds {quote(name)} both with and without the {PREFIX!r} prefix: "
                "expected one copy"
            )
        out[name] = tensor
    return out


def _resolve_config(path: Path, config: NetConfig | None, metadata: Mapping[str, str]) -> NetConfig:
    text = metadata.get(CONFIG_METADATA_KEY)
    stored = None
    if text is not None:
        try:
            stored = NetConfig.from_json(text)
        except ConfigError as exc:
            raise CheckpointError(
                f"checkpoint {printable(path.name)}: metadata {CONFIG_METADATA_KEY}: {printable(exc)}"
            ) from None
    if config is None:
        if stored is None:
            raise CheckpointError(
                f"checkpoint {printable(path.name)} carries no net config ({CONFIG_METADATA_KEY} metadata): "
                "pass --net-config FILE or --backbone NAME"
            )
        return stored
    if stored is not None and stored != config:
        diff = [
            f"{k}={v!r} (file {stored.to_upstream()[k]!r})"
            for k, v in config.to_upstream().items()
            if stored.to_upstream()[k] != v
        ]
        raise CheckpointError(
            f"checkpoint {printable(path.name)} was converted for a different net config: given {', '.join(diff[:_SHOW])}; "
            "expected the file's config (drop --net-config/--backbone to use it)"
        )
    return config


def _names(keys: list[str]) -> str:
    return ", ".join(printable(k, 80) for k in keys[:_SHOW]) + (", ..." if len(keys) > _SHOW else "")
