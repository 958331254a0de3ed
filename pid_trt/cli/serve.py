"""``pidtrt serve``: the decoder as Triton model ``pid_decoder`` (KServe v2 HTTP / gRPC)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pid_trt.cli.errors import EXIT_ENV, cli_errors, report, warn
from pid_trt.cli.options import (
    TextDtype,
    TextEncoder,
    with_captions,
    with_net,
    with_request_tiling,
    with_runtime,
)
from pid_trt.cli.panels import CAPTIONS_PANEL, RUNTIME_PANEL, SERVER_PANEL, SIZE_PANEL
from pid_trt.errors import ConfigError
from pid_trt.options import NetOptions, RuntimeOptions
from pid_trt.tiling.options import TileOptions

NoMemoryCheck = Annotated[
    bool,
    typer.Option(
        "--no-memory-check",
        help="Skip the check that each batch fits the device memory.",
        rich_help_panel=RUNTIME_PANEL,
    ),
]
CaptionCache = Annotated[
    int,
    typer.Option(
        "--caption-cache",
        help="Caption embeddings kept per instance by prompt: a repeat skips the text encoder (0: off; 2.8 MB each).",
        rich_help_panel=CAPTIONS_PANEL,
    ),
]
Host = Annotated[
    str,
    typer.Option(
        "--host", help="Address to listen on (0.0.0.0: every interface).", rich_help_panel=SERVER_PANEL
    ),
]
HttpPort = Annotated[
    int, typer.Option("--http-port", help="KServe v2 HTTP port.", rich_help_panel=SERVER_PANEL)
]
GrpcPort = Annotated[
    int, typer.Option("--grpc-port", help="KServe v2 gRPC port.", rich_help_panel=SERVER_PANEL)
]
MetricsPort = Annotated[
    int,
    typer.Option("--metrics-port", help="Prometheus metrics port (/metrics).", rich_help_panel=SERVER_PANEL),
]
MaxBatch = Annotated[
    int,
    typer.Option(
        "--max-batch",
        help="Most images decoded together (requests of one size).",
        rich_help_panel=SERVER_PANEL,
    ),
]
MaxQueueDelayMs = Annotated[
    float,
    typer.Option(
        "--max-queue-delay-ms",
        help="How long a request may wait for others to batch with.",
        rich_help_panel=SERVER_PANEL,
    ),
]
MaxQueueSize = Annotated[
    int,
    typer.Option(
        "--max-queue-size",
        help="Requests waiting beyond this are refused at once (overload), never queued.",
        rich_help_panel=SERVER_PANEL,
    ),
]
RequestTimeoutS = Annotated[
    float | None,
    typer.Option(
        "--request-timeout-s",
        help="Refuse a request still queued after this many seconds.",
        rich_help_panel=SERVER_PANEL,
    ),
]
Gpus = Annotated[
    str | None,
    typer.Option(
        "--gpus",
        help="GPU ids, e.g. 0,1: one model instance (own Decoder) per GPU.",
        rich_help_panel=SERVER_PANEL,
    ),
]
#: The old spelling of ``--gpus``, kept working and hidden (``--devices`` names tile devices in decode).
GpusAlias = Annotated[
    str | None,
    typer.Option("--devices", hidden=True, help="Old spelling of --gpus.", rich_help_panel=SERVER_PANEL),
]
Instances = Annotated[
    int,
    typer.Option("--instances", help="Model instances per GPU, or on the CPU.", rich_help_panel=SERVER_PANEL),
]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help="torch threads per CPU instance (default: the cores shared out).",
        rich_help_panel=RUNTIME_PANEL,
    ),
]
Workspace = Annotated[
    Path | None,
    typer.Option(
        "--workspace",
        help="Folder for the run's temp model repository (removed on exit).",
        rich_help_panel=SERVER_PANEL,
    ),
]
Verbose = Annotated[
    bool, typer.Option("--verbose", help="Show Triton's info log lines too.", rich_help_panel=SERVER_PANEL)
]
Envelope = Annotated[
    str | None,
    typer.Option(
        "--envelope",
        help="The net's trained sizes WxH[,WxH...] for --tiles auto (default: the checkpoint type's; "
        "stand-in presets: none).",
        rich_help_panel=SIZE_PANEL,
    ),
]


@cli_errors
@with_net
@with_runtime
@with_request_tiling
@with_captions
def serve(
    net: NetOptions = None,  # type: ignore[assignment] - the model options (with_net)
    runtime: RuntimeOptions = None,  # type: ignore[assignment] - backend, precision ... (with_runtime)
    no_memory_check: NoMemoryCheck = False,
    text_encoder: TextEncoder = None,
    text_dtype: TextDtype = None,
    caption_cache: CaptionCache = 32,
    captions: dict = None,  # type: ignore[assignment] - --null-caption, --caption-store ... (with_captions)
    host: Host = "127.0.0.1",
    http_port: HttpPort = 8000,
    grpc_port: GrpcPort = 8001,
    metrics_port: MetricsPort = 8002,
    max_batch: MaxBatch = 4,
    max_queue_delay_ms: MaxQueueDelayMs = 10.0,
    max_queue_size: MaxQueueSize = 32,
    request_timeout_s: RequestTimeoutS = None,
    gpus: Gpus = None,
    devices: GpusAlias = None,
    instances: Instances = 1,
    threads: Threads = None,
    workspace: Workspace = None,
    verbose: Verbose = False,
    tiling: TileOptions = None,  # type: ignore[assignment] - --tiles ... (with_request_tiling)
    envelope: Envelope = None,
) -> None:
    """Serve the decoder on Triton Inference Server until Ctrl-C / SIGTERM (extra: serve). Requests of
    any size: --tiles auto (default) tiles outside the trained sizes or where one shot would not fit;
    a request may carry its own tiles / tile_size / tile_overlap / tile_batch / allow_untrained_size."""
    from pid_trt.serve.config import MODEL_NAME, ModelOptions, ServeOptions, parse_devices
    from pid_trt.serve.server import PidServer, ServerError, serve_until_signal

    model = ModelOptions(
        net, runtime, text_encoder=text_encoder, text_dtype=text_dtype, memory_check=not no_memory_check,
        caption_cache=caption_cache, max_backends=max(8, 2 * max_batch), tiling=tiling.to_params(), envelope=envelope,
        **{k: (None if v is None else str(v) if k != "caption_store_max_mb" else v) for k, v in captions.items()},
    )  # fmt: skip
    options = ServeOptions(
        host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, max_batch=max_batch,
        max_queue_delay_ms=max_queue_delay_ms, max_queue_size=max_queue_size,
        request_timeout_s=request_timeout_s, devices=parse_devices(_gpus(gpus, devices)), instances=instances,
        threads=threads, verbose=verbose,
    )  # fmt: skip
    if net.random_weights:
        warn("--random-weights: the network is randomly initialised; the images mean nothing")
    server = PidServer(model, options, workspace=workspace)

    def ready(seconds: float) -> None:
        where = "GPU " + ",".join(map(str, options.devices)) if options.devices else "cpu"
        typer.echo(
            f"serving {MODEL_NAME} ({server.net['net']}, {server.net['backend']} {server.net['precision']}, "
            f"{options.instance_count} instance(s) on {where}, max batch {max_batch}, queue {max_queue_size}) "
            f"at {server.http_url} (gRPC {server.grpc_url}, metrics {server.metrics_url}); ready in {seconds:.1f} s; "
            "Ctrl-C to stop"
        )

    try:
        code = serve_until_signal(server, ready)
    except ServerError as exc:
        report(str(exc))
        raise typer.Exit(EXIT_ENV) from None
    typer.echo(f"stopped (tritonserver exit code {code})", err=True)


def _gpus(gpus: str | None, devices: str | None) -> str | None:
    """``--gpus``, or its old spelling ``--devices``; not both."""
    if gpus is not None and devices is not None:
        raise ConfigError("--gpus and --devices (its old spelling) given together: pass --gpus")
    return gpus if gpus is not None else devices
