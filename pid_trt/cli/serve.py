"""``pidtrt serve``: the decoder as Triton model ``pid_decoder`` (KServe v2 HTTP / gRPC)."""

from __future__ import annotations

from pathlib import Path

import typer

from pid_trt.cli.errors import EXIT_ENV, cli_errors, report, warn
from pid_trt.cli.options import TextDtype, TextEncoder, with_net, with_request_tiling, with_runtime
from pid_trt.options import NetOptions, RuntimeOptions


@cli_errors
@with_net
@with_runtime
@with_request_tiling
def serve(
    net: NetOptions = None,  # type: ignore[assignment] - the model options (cli.options.with_net)
    runtime: RuntimeOptions = None,  # type: ignore[assignment] - backend, precision ... (with_runtime)
    no_memory_check: bool = typer.Option(
        False, "--no-memory-check", help="Skip the check that each batch fits the device memory."
    ),
    text_encoder: TextEncoder = None,
    text_dtype: TextDtype = None,
    caption_cache: int = typer.Option(
        32,
        "--caption-cache",
        help="Caption embeddings kept per instance by prompt: a repeated prompt skips the text encoder "
        "(0: none; 2.8 MB each for Gemma-2-2B).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    http_port: int = typer.Option(8000, "--http-port", help="KServe v2 HTTP port."),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="KServe v2 gRPC port."),
    metrics_port: int = typer.Option(8002, "--metrics-port", help="Prometheus metrics port (/metrics)."),
    max_batch: int = typer.Option(
        4, "--max-batch", help="Most images decoded together (requests of one size)."
    ),
    max_queue_delay_ms: float = typer.Option(
        10.0, "--max-queue-delay-ms", help="How long a request may wait for others to batch with."
    ),
    max_queue_size: int = typer.Option(
        32,
        "--max-queue-size",
        help="Requests waiting beyond this are refused at once (overload), never queued.",
    ),
    request_timeout_s: float | None = typer.Option(
        None, "--request-timeout-s", help="Refuse a request still queued after this many seconds."
    ),
    devices: str | None = typer.Option(
        None, "--devices", help="GPU ids, e.g. 0,1: one model instance (own Decoder) per GPU."
    ),
    instances: int = typer.Option(1, "--instances", help="Model instances per GPU, or on the CPU."),
    threads: int | None = typer.Option(
        None, "--threads", help="torch threads per CPU instance (default: the cores shared out)."
    ),
    workspace: Path | None = typer.Option(
        None, "--workspace", help="Folder for the run's temp model repository (removed on exit)."
    ),
    verbose: bool = typer.Option(False, "--verbose", help="Show Triton's info log lines too."),
    tiling: dict = None,  # type: ignore[assignment] - --tiles, --tile-size ... (with_request_tiling)
    envelope: str | None = typer.Option(
        None,
        "--envelope",
        help="The net's trained sizes WxH[,WxH...], which --tiles auto keeps one-shot decodes inside "
        "(default: the checkpoint type's; none for tiny, small and --net-config nets).",
    ),
) -> None:
    """Serve the decoder on Triton Inference Server until Ctrl-C / SIGTERM (extra: serve). Requests of
    any size: --tiles auto (default) tiles outside the trained sizes or where one shot would not fit;
    a request may carry its own tiles / tile_size / tile_overlap / tile_batch / allow_untrained_size."""
    from pid_trt.serve.config import MODEL_NAME, ModelOptions, ServeOptions, parse_devices
    from pid_trt.serve.server import PidServer, ServerError, serve_until_signal

    model = ModelOptions(
        net, runtime, text_encoder=text_encoder, text_dtype=text_dtype, memory_check=not no_memory_check,
        caption_cache=caption_cache, max_backends=max(8, 2 * max_batch), tiling=tiling, envelope=envelope,
    )  # fmt: skip
    options = ServeOptions(
        host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, max_batch=max_batch,
        max_queue_delay_ms=max_queue_delay_ms, max_queue_size=max_queue_size,
        request_timeout_s=request_timeout_s, devices=parse_devices(devices), instances=instances,
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
