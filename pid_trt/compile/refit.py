"""Weightless plans: which weights a plan must be refitted with, from where, and the checks.

A weightless plan is built from a *refittable* export (parameters kept as initializers named
``model.<checkpoint key>``, :func:`pid_trt.compile.onnx_graph.optimise` with ``keep``) with
``STRIP_PLAN`` + ``REFIT_INDIVIDUAL``, every parameter marked refittable. Its manifest
records the weight list -- ``[ONNX name, ONNX type, shape]`` per weight -- and keys the plan
by the *architecture key*: sha256 of (net config, precision, weight list). One plan then
serves every checkpoint of that architecture and precision.

At load (:class:`pid_trt.backends.trt_backend.TrtBackend`), with a GPU:
``Refitter.set_named_weights`` for every listed weight, ``get_missing_weights`` must be
empty, then ``refit_cuda_engine``. Before any of that, on any machine,
:func:`check_architecture` refuses a checkpoint whose net config or tensor layout does not
give the plan's architecture key, and :func:`refit_tensors` refuses one that lacks a listed
weight -- each in one line.

Weights come from the checkpoint the user passes (its state dict, cast to the graph's type
exactly as the exporter casts the model) or from a refittable export's ONNX initializers
(:func:`tensors_from_onnx`).

FP8 plans are not made weightless: their Q/DQ scales are weights too, but the activation
scales come from calibrating *that* checkpoint (ModelOpt PTQ), so a new checkpoint needs a new
calibration and a new quantized graph, not just its tensors; and TensorRT folds the scales
into the FP8 GEMMs it selects at build time. An FP8 plan is built per checkpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from pid_trt.errors import ConfigError, StoreError
from pid_trt.stores.artifacts import canonical_json

#: Prefix of parameter initializers in traced graphs (``model.`` + checkpoint key).
PARAMETER_PREFIX = "model."
#: ONNX element type name -> torch dtype name of the refit tensor.
_TORCH_DTYPES = {"FLOAT": "float32", "FLOAT16": "float16", "BFLOAT16": "bfloat16"}


def checkpoint_key(onnx_name: str) -> str:
    """The checkpoint key (state-dict name) of a parameter initializer."""
    return onnx_name[len(PARAMETER_PREFIX) :] if onnx_name.startswith(PARAMETER_PREFIX) else onnx_name


def architecture_key(net_config: Mapping[str, Any], precision: str, weights: Sequence[Sequence[Any]]) -> str:
    """sha256 (hex) of what a weightless plan needs of a checkpoint: the net config, the
    precision and every weight's [ONNX name, ONNX type, shape]."""
    doc = {
        "net_config": dict(net_config),
        "precision": str(precision),
        "weights": sorted([str(n), str(t), [int(d) for d in s]] for n, t, s in weights),
    }
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()


def _first_difference(want: Mapping[str, Any], have: Mapping[str, Any]) -> str:
    for k in sorted(set(want) | set(have)):
        if canonical_json(want.get(k)) != canonical_json(have.get(k)):
            return f"{k}={have.get(k)!r} (the plan's architecture has {want.get(k)!r})"
    return "no field differs"


def check_architecture(
    manifest_key: Mapping[str, Any],
    weights: Sequence[Sequence[Any]],
    net_config: Mapping[str, Any],
    shapes: Mapping[str, Sequence[int]],
    what: str,
) -> None:
    """Refuse (StoreError, one line) a checkpoint that does not fit a weightless plan.

    ``manifest_key``: the plan manifest's ``key`` (net config, precision,
    ``architecture_sha256``); ``weights``: its recorded weight list; ``net_config`` and
    ``shapes`` (checkpoint key -> shape): the checkpoint's. ``what`` names the checkpoint.
    """
    plan_net = manifest_key.get("net_config") or {}
    if canonical_json(plan_net) != canonical_json(dict(net_config)):
        raise StoreError(
            f"{what} does not fit this weightless plan: net config differs, "
            f"{_first_difference(plan_net, net_config)}; build a plan for its architecture"
        )
    have = []
    for name, dtype, shape in weights:
        got = shapes.get(checkpoint_key(name))
        if got is None:
            raise StoreError(
                f"{what} does not fit this weightless plan: it has no tensor {checkpoint_key(name)!r}"
            )
        if [int(d) for d in got] != [int(d) for d in shape]:
            raise StoreError(
                f"{what} does not fit this weightless plan: {checkpoint_key(name)} has shape "
                f"{list(got)}, the plan's architecture has {list(shape)}"
            )
        have.append([name, dtype, list(got)])
    digest = architecture_key(net_config, str(manifest_key.get("precision")), have)
    if digest != manifest_key.get("architecture_sha256"):
        raise StoreError(
            f"{what} does not fit this weightless plan: architecture key {digest[:12]} != "
            f"{str(manifest_key.get('architecture_sha256'))[:12]} (precision or weight list differ); rebuild the plan"
        )


def missing_weights(weights: Sequence[Sequence[Any]], available: Sequence[str] | set[str]) -> list[str]:
    """Checkpoint keys of the plan's weights that ``available`` (checkpoint keys) lacks, sorted."""
    have = set(available)
    return sorted(checkpoint_key(n) for n, _, _ in weights if checkpoint_key(n) not in have)


def refit_tensors(
    weights: Sequence[Sequence[Any]], state_dict: Mapping[str, Any], what: str
) -> dict[str, Any]:
    """ONNX name -> contiguous CPU torch tensor in the graph's type, for every listed weight.

    The cast is the exporter's (``model.to(dtype)``), so a refit plan computes with exactly
    the weights an engine built from that checkpoint's export would hold. Refuses (StoreError,
    one line) when a weight is missing or has another shape.
    """
    import torch

    absent = missing_weights(weights, set(state_dict))
    if absent:
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise StoreError(
            f"refit refused: {what} lacks {absent[0]!r}{more} of the plan's {len(weights)} weights"
        )
    out = {}
    for name, dtype, shape in weights:
        if dtype not in _TORCH_DTYPES:
            raise ConfigError(
                f"weight {name}: ONNX type {dtype} cannot be refitted (expected FLOAT, FLOAT16 or BFLOAT16)"
            )
        t = state_dict[checkpoint_key(name)]
        if list(t.shape) != [int(d) for d in shape]:
            raise StoreError(
                f"refit refused: {what} tensor {checkpoint_key(name)} has shape {list(t.shape)}, the plan {list(shape)}"
            )
        out[name] = t.detach().to("cpu", getattr(torch, _TORCH_DTYPES[dtype])).contiguous()
    return out


def tensors_from_onnx(path: Any, weights: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """The listed weights read from a refittable export's graph and external data, as a
    checkpoint-keyed state dict for :func:`refit_tensors`."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    wanted = {n for n, _, _ in weights}
    model = onnx.load(str(path), load_external_data=True)
    out = {}
    for init in model.graph.initializer:
        if init.name in wanted:
            arr = np.ascontiguousarray(numpy_helper.to_array(init))
            if init.data_type == onnx.TensorProto.BFLOAT16:  # numpy has no bfloat16: the raw bits
                t = torch.from_numpy(arr.reshape(-1).view(np.int16).copy()).view(torch.bfloat16)
                t = t.reshape(tuple(init.dims))
            else:
                t = torch.from_numpy(arr.copy())
            out[checkpoint_key(init.name)] = t
    return out
