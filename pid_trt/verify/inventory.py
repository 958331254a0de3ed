"""Key / shape inventory of NVIDIA's released PiD checkpoints (package data).

``pid_trt/data/checkpoint_inventory.json`` maps each released experiment (the upstream
checkpoint directory, ``checkpoints/<experiment>/model_ema_bf16.pth``; :attr:`Preset.experiment`)
to ``upstream_config`` (the upstream ``PidNet`` keyword arguments), ``num_keys``,
``num_params`` and ``keys``: every state-dict key, with its ``net.`` prefix, and its shape.
It was built from the official network on the meta device (no weights), so the released
layouts can be checked on any machine without downloading a checkpoint.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from types import MappingProxyType
from typing import Any

#: Package-relative location of the inventory (``pid_trt/<INVENTORY_RESOURCE>``).
INVENTORY_RESOURCE = "data/checkpoint_inventory.json"
#: Prefix of the released checkpoints' keys.
_PREFIX = "net."


def inventory_file() -> Traversable:
    """The inventory file inside the installed package (it may not exist if the install is broken)."""
    return resources.files("pid_trt").joinpath(*INVENTORY_RESOURCE.split("/"))


@functools.cache
def load_inventory() -> Mapping[str, Mapping[str, Any]]:
    """The whole inventory: experiment → ``{"upstream_config", "num_keys", "num_params", "keys"}``.

    Raises :class:`FileNotFoundError` naming the path when the package data is missing.
    """
    path = inventory_file()
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint inventory {path} not found: expected package data pid_trt/{INVENTORY_RESOURCE} "
            "(reinstall pid-trt; a source checkout has it in git)"
        )
    return MappingProxyType(json.loads(path.read_text(encoding="utf-8")))


def experiments() -> tuple[str, ...]:
    """Names of the released experiments, in inventory order."""
    return tuple(load_inventory())


def inventory_entry(experiment: str) -> Mapping[str, Any]:
    """One experiment's entry; :class:`KeyError` naming the known experiments when absent."""
    inventory = load_inventory()
    if experiment not in inventory:
        raise KeyError(
            f"experiment {experiment!r} is not in the checkpoint inventory: expected one of {list(inventory)}"
        )
    return inventory[experiment]


def inventory_shapes(experiment: str) -> dict[str, tuple[int, ...]]:
    """Key (without the ``net.`` prefix) → shape of one released checkpoint."""
    return dict(_shapes(experiment))


@functools.cache
def _shapes(experiment: str) -> Mapping[str, tuple[int, ...]]:
    keys = inventory_entry(experiment)["keys"]
    return MappingProxyType({k.removeprefix(_PREFIX): tuple(v) for k, v in keys.items()})


def matching_experiments(shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """The released experiments whose key/shape set equals ``shapes`` exactly.

    Keys may carry the ``net.`` prefix or not (all or none). Several experiments share a
    layout (e.g. the Flux.1 and SD3 2k checkpoints), so this is a list; empty when the
    set matches no released checkpoint.
    """
    given = {k.removeprefix(_PREFIX): tuple(v) for k, v in shapes.items()}
    return [name for name in experiments() if _shapes(name) == given]
