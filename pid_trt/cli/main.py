"""The ``pidtrt`` typer app. Commands import their heavy dependencies lazily."""

from __future__ import annotations

import typer

from pid_trt.cli.bench import bench
from pid_trt.cli.build import build
from pid_trt.cli.convert import convert
from pid_trt.cli.decode import decode
from pid_trt.cli.doctor import doctor
from pid_trt.cli.encode_caption import encode_caption
from pid_trt.cli.encode_image import encode_image
from pid_trt.cli.engines import engines
from pid_trt.cli.export import export
from pid_trt.cli.generate import generate
from pid_trt.cli.info import info
from pid_trt.cli.request import request
from pid_trt.cli.sample import sample_latent
from pid_trt.cli.serve import serve
from pid_trt.cli.verify import verify

app = typer.Typer(
    name="pidtrt",
    help="Deploy NVIDIA's PiD pixel-diffusion decoder: export, build TensorRT engines, decode, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for _name, _command in (
    ("decode", decode), ("build", build), ("export", export), ("convert", convert), ("bench", bench),
    ("sample-latent", sample_latent), ("encode-caption", encode_caption), ("generate", generate),
    ("encode-image", encode_image), ("verify", verify), ("serve", serve), ("request", request),
    ("doctor", doctor), ("info", info),
):  # fmt: skip
    app.command(_name)(_command)
app.add_typer(engines, name="engines")


def _show_stage_lines() -> None:
    """Print the package's INFO log lines (long stages: export, fp8 calibration) on stderr."""
    import logging

    logger = logging.getLogger("pid_trt")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main() -> None:
    """Console-script entry point."""
    _show_stage_lines()
    app()


if __name__ == "__main__":
    main()
