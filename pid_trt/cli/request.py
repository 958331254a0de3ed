"""``pidtrt request``: one latent file decoded by a running ``pidtrt serve``."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from pid_trt.cli.errors import EXIT_ENV, EXIT_USAGE, cli_errors, report


@cli_errors
def request(
    latent: Path = typer.Argument(
        ..., help="Latent file (safetensors: latent, caption_embedding, degrade_sigma)."
    ),
    url: str = typer.Option(..., "--url", help="The server, e.g. http://127.0.0.1:8000."),
    output: Path = typer.Option(
        ..., "-o", "--output", help="out.png (out_0.png, out_1.png ... for B > 1) or out.safetensors."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the sampler's noise (same seed: same image as decode)."
    ),
    prompt: list[str] = typer.Option(
        [], "--prompt", help="Caption text (one, or one per batch row), encoded by the server's text encoder."
    ),
    caption: Path | None = typer.Option(
        None, "--caption", help="Caption file from `pidtrt encode-caption` (caption_embedding [N, T, D])."
    ),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait for the image."),
) -> None:
    """Send a latent file to `pidtrt serve` and write the image(s) as `pidtrt decode` does (extra: serve)."""
    from pid_trt.errors import ConfigError
    from pid_trt.serve.client import PidClient, ServeRequestError
    from pid_trt.serve.remote import request_file

    if prompt and caption is not None:
        raise ConfigError("--prompt and --caption exclude each other: pass one")
    start = time.perf_counter()
    with PidClient(url, timeout_s=timeout) as client:
        try:
            done = request_file(client, latent, output, seed=seed, prompt=prompt, caption=caption)
        except ServeRequestError as exc:
            report(f"{latent}: {exc} ({exc.kind})")
            raise typer.Exit(EXIT_USAGE if exc.kind == "invalid" else EXIT_ENV) from None
    names = ", ".join(str(p) for p in done.written)
    typer.echo(
        f"wrote {names} ({done.width}x{done.height}, batch {done.batch}, {url}) in {time.perf_counter() - start:.2f} s"
    )
