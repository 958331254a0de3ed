"""The ``pidtrt`` typer app. Commands import their heavy dependencies lazily."""

from __future__ import annotations

import typer

from pid_trt.cli.bench import bench
from pid_trt.cli.build import build
from pid_trt.cli.convert import convert
from pid_trt.cli.decode import decode
from pid_trt.cli.engines import engines
from pid_trt.cli.export import export
from pid_trt.cli.sample import sample_latent

app = typer.Typer(
    name="pidtrt",
    help="Deploy NVIDIA's PiD pixel-diffusion decoder: export, build TensorRT engines, decode, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("decode")(decode)
app.command("build")(build)
app.command("export")(export)
app.command("convert")(convert)
app.command("bench")(bench)
app.command("sample-latent")(sample_latent)
app.add_typer(engines, name="engines")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
