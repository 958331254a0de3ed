"""Typer option declarations shared by the commands, as ``Annotated`` aliases: each option
is declared once here (or, for single flags several commands share, in :mod:`pid_trt.cli.flags`),
and a command lists it as ``backbone: Backbone = None``.

:func:`net_options` and :func:`runtime_options` turn the parsed values into the two option
objects of :mod:`pid_trt.options`, which do all the checking.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from pid_trt.backends.registry import BACKENDS, backend_class
from pid_trt.cli.panels import (
    CAPTIONS_PANEL,
    MODEL_PANEL,
    RUNTIME_PANEL,
    SIZE_PANEL,
)  # fmt: skip
from pid_trt.config import Backbone as BackboneName
from pid_trt.config import CkptType as CkptTypeName
from pid_trt.config import Precision
from pid_trt.options import NetOptions, RuntimeOptions
from pid_trt.tiling.options import TileOptions


def _either(names: list[str]) -> str:
    """``a, b or c``."""
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


def _precision_defaults() -> str:
    """The registered backends' default precisions, for ``--precision``'s help: per device the
    most common one, then the backends that differ (``cpu fp32; cuda bf16, onnxruntime fp16``)."""
    parts = []
    for device in ("cpu", "cuda"):
        found = {n: backend_class(n) for n in BACKENDS}
        found = {n: c.default_precision(device).value for n, c in found.items() if device in c.devices}
        common = max(set(found.values()), key=list(found.values()).count)
        parts.append(
            ", ".join([f"{device} {common}"] + [f"{n} {p}" for n, p in found.items() if p != common])
        )
    return "; ".join(parts)


def backend_names() -> str:
    """The registered backends as help text (``torch, ... or tensorrt``)."""
    return _either(list(BACKENDS))


def _cuda_only() -> list[str]:
    """The registered backends that run on CUDA only."""
    return [name for name in BACKENDS if "cpu" not in backend_class(name).devices]


# ------------------------------------------------------------------ which network
Backbone = Annotated[
    str | None,
    typer.Option(
        "--backbone",
        help=f"Preset: {', '.join(b.value for b in BackboneName)}.",
        rich_help_panel=MODEL_PANEL,
    ),
]
CkptType = Annotated[
    str | None,
    typer.Option(
        "--ckpt-type",
        help=f"Checkpoint type: {' or '.join(c.value for c in CkptTypeName)} (default: {CkptTypeName.K2.value} where it exists).",
        rich_help_panel=MODEL_PANEL,
    ),
]
Checkpoint = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        help="PiD checkpoint (.pth as released, or .safetensors).",
        rich_help_panel=MODEL_PANEL,
    ),
]
NetConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--net-config", help="JSON file of upstream PidNet keyword arguments.", rich_help_panel=MODEL_PANEL
    ),
]
RandomWeights = Annotated[
    bool,
    typer.Option(
        "--random-weights",
        help="Seeded random weights for smoke tests and timing (images mean nothing).",
        rich_help_panel=MODEL_PANEL,
    ),
]
WeightsSeed = Annotated[
    int, typer.Option("--weights-seed", help="Seed of --random-weights.", rich_help_panel=MODEL_PANEL)
]

# ------------------------------------------------------------------ how to run it
BackendName = Annotated[
    str,
    typer.Option(
        "--backend",
        help=f"{backend_names()}; also NAME[:PRECISION]\\[@DEVICE], e.g. {list(BACKENDS)[-1]}:fp8.",
        rich_help_panel=RUNTIME_PANEL,
    ),
]
PrecisionName = Annotated[
    str | None,
    typer.Option(
        "--precision",
        "--dtype",
        help=f"{_either([p.value for p in Precision])} (default: {_precision_defaults()}).",
        rich_help_panel=RUNTIME_PANEL,
    ),
]
Device = Annotated[
    str | None,
    typer.Option(
        "--device",
        help=f"cpu or cuda[:N] (default: cuda for {_either(_cuda_only())}, else cpu).",
        rich_help_panel=RUNTIME_PANEL,
    ),
]
EngineDir = Annotated[
    Path, typer.Option("--engine-dir", help="Engine store (TensorRT engines).", rich_help_panel=RUNTIME_PANEL)
]
ExportDir = Annotated[
    Path,
    typer.Option(
        "--export-dir",
        help="ONNX store (ONNX exports: ONNX Runtime, engine builds).",
        rich_help_panel=RUNTIME_PANEL,
    ),
]
NoHoist = Annotated[
    bool,
    typer.Option(
        "--no-hoist",
        help="Re-run the latent adapter and caption projection every step (as upstream; slower).",
        rich_help_panel=RUNTIME_PANEL,
    ),
]
CudaGraph = Annotated[
    bool,
    typer.Option(
        "--cuda-graph",
        help="Replay the step engine as a CUDA graph (TensorRT engines).",
        rich_help_panel=RUNTIME_PANEL,
    ),
]

# ------------------------------------------------------------------ any size (pid_trt.tiling)
Tiles = Annotated[
    str,
    typer.Option(
        "--tiles",
        help="auto (one shot inside the trained sizes and memory, else tiles of a trained size), off, or COLSxROWS.",
        rich_help_panel=SIZE_PANEL,
    ),
]
TileSize = Annotated[
    str | None,
    typer.Option(
        "--tile-size",
        help="Tile WIDTHxHEIGHT in pixels, on the latent grid (default: a trained size).",
        rich_help_panel=SIZE_PANEL,
    ),
]
TileOverlap = Annotated[
    int | None,
    typer.Option(
        "--tile-overlap",
        help="Least overlap of neighbouring tiles in pixels (default: 1/8 of the tile).",
        rich_help_panel=SIZE_PANEL,
    ),
]
TileBatch = Annotated[
    int,
    typer.Option(
        "--tile-batch", help="Tiles per backend call (one engine batch).", rich_help_panel=SIZE_PANEL
    ),
]
AllowUntrainedSize = Annotated[
    bool,
    typer.Option(
        "--allow-untrained-size",
        help="Decode in one shot outside the trained sizes (colours may drift).",
        rich_help_panel=SIZE_PANEL,
    ),
]
TileDevices = Annotated[
    str | None,
    typer.Option(
        "--devices",
        help="Spread the tiles over these devices (cuda:0,cuda:1), one backend each, blended on --device.",
        rich_help_panel=SIZE_PANEL,
    ),
]

# ------------------------------------------------------------------ sizes
Res = Annotated[
    int | None, typer.Option("--res", help="Square output size N (N x N pixels).", rich_help_panel=SIZE_PANEL)
]
OutputSize = Annotated[
    str | None,
    typer.Option(
        "--size", help="Output size WIDTHxHEIGHT in pixels, e.g. 3840x2160.", rich_help_panel=SIZE_PANEL
    ),
]

TextEncoder = Annotated[
    Path | None,
    typer.Option(
        "--text-encoder",
        help="Local Gemma-2-2B-it directory for --prompt (default: $PIDTRT_TEXT_ENCODER).",
        rich_help_panel=CAPTIONS_PANEL,
    ),
]
TextDtype = Annotated[
    str | None,
    typer.Option(
        "--text-dtype",
        help="Caption encoder precision: fp32 or bf16 (default: bf16 on cuda, fp32 on cpu).",
        rich_help_panel=CAPTIONS_PANEL,
    ),
]

NullCaption = Annotated[
    Path | None,
    typer.Option(
        "--null-caption",
        help="Null caption (`pidtrt encode-caption --null`) when no caption or prompt is given "
        "(default: $PIDTRT_NULL_CAPTION).",
        rich_help_panel=CAPTIONS_PANEL,
    ),
]
CaptionStoreDir = Annotated[
    Path | None,
    typer.Option(
        "--caption-store",
        help="Persistent caption store folder (default: $PIDTRT_CAPTION_STORE, else ~/.cache/pid-trt/captions).",
        rich_help_panel=CAPTIONS_PANEL,
    ),
]
CaptionStoreMaxMb = Annotated[
    float | None,
    typer.Option(
        "--caption-store-max-mb",
        help="Bound of the caption store in MB, oldest out (default: 1024).",
        rich_help_panel=CAPTIONS_PANEL,
    ),
]


def caption_keywords(
    null_caption: Path | None, caption_store: Path | None, caption_store_max_mb: float | None
) -> dict[str, Any]:
    """The caption keywords of :meth:`pid_trt.Decoder.load` as given on the command line."""
    return {
        "null_caption": null_caption, "caption_store": caption_store, "caption_store_max_mb": caption_store_max_mb,
    }  # fmt: skip


def option_param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    """One keyword-only command parameter (an option alias and its default) of a bundle."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


#: The command-line parameters that make a :class:`NetOptions`, in its field order.
NET_PARAMS = (
    option_param("backbone", Backbone, None),
    option_param("ckpt_type", CkptType, None),
    option_param("checkpoint", Checkpoint, None),
    option_param("net_config", NetConfigFile, None),
    option_param("random_weights", RandomWeights, False),
    option_param("weights_seed", WeightsSeed, 0),
)
#: The command-line parameters that make a :class:`RuntimeOptions`.
RUNTIME_PARAMS = (
    option_param("backend", BackendName, "torch"),
    option_param("precision", PrecisionName, None),
    option_param("device", Device, None),
    option_param("engine_dir", EngineDir, Path("engines")),
    option_param("export_dir", ExportDir, Path("export")),
    option_param("no_hoist", NoHoist, False),
    option_param("cuda_graph", CudaGraph, False),
)

#: The command-line parameters of a decode's tiling, in the order of :meth:`TileOptions.create`.
TILING_PARAMS = (
    option_param("tiles", Tiles, "auto"),
    option_param("tile_size", TileSize, None),
    option_param("tile_overlap", TileOverlap, None),
    option_param("tile_batch", TileBatch, 1),
    option_param("allow_untrained_size", AllowUntrainedSize, False),
    option_param("devices", TileDevices, None),
)


def option_bundle(name: str, params: tuple[inspect.Parameter, ...], make: Callable[..., Any]) -> Callable:
    """A decorator that shows a command's parameter ``name`` to typer as ``params`` and hands
    the command ``make(**their values)`` in its place."""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        if name not in signature.parameters:
            raise TypeError(f"{command.__name__} has no parameter {name!r} to expand")
        expanded: list[inspect.Parameter] = []
        for p in signature.parameters.values():
            expanded += [q.replace(kind=p.kind) for q in params] if p.name == name else [p]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[name] = make(*(kwargs.pop(p.name) for p in params))
            return command(*args, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=expanded)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def net_options(
    backbone: str | None, ckpt_type: str | None, checkpoint: Path | None, net_config: Path | None,
    random_weights: bool, weights_seed: int,
) -> NetOptions:  # fmt: skip
    """The network options as given on the command line (checked by :meth:`NetOptions.resolve`)."""
    return NetOptions(backbone, ckpt_type, checkpoint, net_config, random_weights, weights_seed)


def runtime_options(
    backend: str, precision: str | None, device: str | None, engine_dir: Path, export_dir: Path,
    no_hoist: bool = False, cuda_graph: bool = False,
) -> RuntimeOptions:  # fmt: skip
    """The runtime options as given (checked by :meth:`RuntimeOptions.resolved`)."""
    return RuntimeOptions(backend, precision, device, engine_dir, export_dir, not no_hoist, cuda_graph)


def given_flags(params: tuple[inspect.Parameter, ...], values: dict[str, Any]) -> list[str]:
    """The flags among ``params`` whose value in ``values`` differs from their default."""
    return ["--" + p.name.replace("_", "-") for p in params if values.get(p.name, p.default) != p.default]


#: The command-line parameters of the caption rule (:func:`caption_keywords`).
CAPTION_PARAMS = (
    option_param("null_caption", NullCaption, None),
    option_param("caption_store", CaptionStoreDir, None),
    option_param("caption_store_max_mb", CaptionStoreMaxMb, None),
)

#: ``@with_net`` on a command with a parameter ``net: NetOptions``: typer sees the six network options.
with_net = option_bundle("net", NET_PARAMS, net_options)
#: ``@with_runtime`` on a command with ``runtime: RuntimeOptions``: typer sees the seven runtime options.
with_runtime = option_bundle("runtime", RUNTIME_PARAMS, runtime_options)
#: ``@with_tile_options`` on a command with ``tiling: TileOptions``: typer sees the six tiling
#: options and the command gets them as one checked :class:`~pid_trt.tiling.TileOptions`.
with_tile_options = option_bundle("tiling", TILING_PARAMS, TileOptions.create)
#: The tiling options but ``--devices`` (a request's: the server places its own devices), for
#: ``pidtrt serve`` and ``pidtrt request``.
with_request_tiling = option_bundle(
    "tiling", tuple(p for p in TILING_PARAMS if p.name != "devices"), TileOptions.create
)
#: ``@with_captions`` on a command with ``captions: dict``: typer sees --null-caption, --caption-store(-max-mb).
with_captions = option_bundle("captions", CAPTION_PARAMS, caption_keywords)
