"""``pidtrt request``: one latent file decoded by a running ``pidtrt serve``.

:func:`given_tiling` is also the tiling of ``pidtrt decode --server``: a request carries
only the tiling options given on its command line, the others are the server's."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import typer

from pid_trt.cli.errors import EXIT_ENV, EXIT_USAGE, cli_errors, report
from pid_trt.cli.flags import CaptionFile, RequestTimeout, Seed
from pid_trt.cli.options import with_request_tiling
from pid_trt.tiling.options import TileOptions


def given_tiling(tiling: TileOptions, ctx: typer.Context | None = None) -> dict[str, Any]:
    """The tiling options given on the command line of command ``ctx`` (or in its environment),
    a default's value included, as request parameters (:meth:`TileOptions.to_params`); the
    others are left to the server's defaults. Without ``ctx``: those whose value differs from
    their default. ``devices`` is never sent (the server places its own)."""
    defaults = TileOptions().to_params()

    def given(name: str, value: Any) -> bool:
        source = ctx.get_parameter_source(name) if ctx is not None else None
        if source is None:
            return value != defaults.get(name)
        return source.name != "DEFAULT"  # typer's ParameterSource: COMMANDLINE, ENVIRONMENT ...

    params = dataclasses.replace(tiling, devices=()).to_params()
    return {name: value for name, value in params.items() if given(name, value)}


@cli_errors
@with_request_tiling
def request(
    ctx: typer.Context,
    latent: Path = typer.Argument(
        ..., help="Latent file (safetensors: latent, caption_embedding, degrade_sigma)."
    ),
    url: str = typer.Option(..., "--url", help="The server, e.g. http://127.0.0.1:8000."),
    output: Path = typer.Option(
        ..., "-o", "--output", help="out.png (out_0.png, out_1.png ... for B > 1) or out.safetensors."
    ),
    seed: Seed = 0,
    prompt: list[str] = typer.Option(
        [], "--prompt", help="Caption text (one, or one per batch row), encoded by the server's text encoder."
    ),
    caption: CaptionFile = None,
    timeout: RequestTimeout = 600.0,
    tiling: TileOptions = None,  # type: ignore[assignment] - a bundle (cli.options.with_request_tiling)
) -> None:
    """Send a latent file to `pidtrt serve` and write the image(s) as `pidtrt decode` does (extra: serve).
    The tiling options given go with the request (the server's own for those not given)."""
    from pid_trt.errors import ConfigError
    from pid_trt.serve.client import PidClient, ServeRequestError
    from pid_trt.serve.remote import request_file

    if prompt and caption is not None:
        raise ConfigError("--prompt and --caption exclude each other: pass one")
    params = given_tiling(tiling, ctx)
    start = time.perf_counter()
    with PidClient(url, timeout_s=timeout) as client:
        try:
            done = request_file(
                client, latent, output, seed=seed, prompt=prompt, caption=caption, tiling=params
            )
        except ServeRequestError as exc:
            report(f"{latent}: {exc} ({exc.kind})")
            raise typer.Exit(EXIT_USAGE if exc.kind == "invalid" else EXIT_ENV) from None
    names = ", ".join(str(p) for p in done.written)
    typer.echo(
        f"wrote {names} ({done.width}x{done.height}, batch {done.batch}, {url}) in {time.perf_counter() - start:.2f} s"
    )
