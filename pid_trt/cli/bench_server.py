"""``pidtrt bench --server``: load-test a running ``pidtrt serve`` (:mod:`pid_trt.serve.loadtest`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pid_trt.cli.panels import SERVER_PANEL
from pid_trt.errors import ConfigError

Server = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="Load-test a running `pidtrt serve` at this URL instead (http://HOST:PORT).",
        rich_help_panel=SERVER_PANEL,
    ),
]
Concurrency = Annotated[
    list[int],
    typer.Option(
        "--concurrency",
        help="--server: clients sending at once (repeatable: one test each).",
        rich_help_panel=SERVER_PANEL,
    ),
]
Requests = Annotated[
    int, typer.Option("--requests", min=1, help="--server: requests per test.", rich_help_panel=SERVER_PANEL)
]
ServerOutput = Annotated[
    str,
    typer.Option(
        "--server-output",
        help="--server: what each request asks for: image (float, binary data) or png (encoded by the server).",
        rich_help_panel=SERVER_PANEL,
    ),
]


def bench_server(
    url: str,
    sizes: list[tuple[int, int]],
    concurrency: list[int],
    requests: int,
    timeout: float | None,
    json_path: Path | None,
    markdown_path: Path | None,
    title: str | None,
    output: str = "image",
) -> None:
    """``--server``: one load test per size x concurrency; table on stdout, JSON / Markdown files."""
    from pid_trt.serve.loadtest import check_output, dump_document, render_markdown, run_load

    if any(c < 1 for c in concurrency):
        raise ConfigError(f"--concurrency {concurrency}: expected integers >= 1")
    check_output(output)
    records = []
    for height, width in sizes:
        for c in dict.fromkeys(concurrency):
            typer.echo(f"load test {width}x{height}, concurrency {c}, {requests} requests -> {url}", err=True)
            records.append(
                run_load(url, height, width, c, requests, timeout_s=timeout or 600.0, output=output)
            )
    text = render_markdown(records, title)
    typer.echo(text)
    if json_path is not None:
        meta = {"command": "pidtrt bench --server", "url": url, "requests": requests, "output": output}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(dump_document(records, meta))
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(text)
