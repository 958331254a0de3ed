"""The ``pidtrt`` typer app. Commands import their heavy dependencies lazily."""

from __future__ import annotations

import typer

from pid_trt.cli.decode import decode
from pid_trt.cli.sample import sample_latent

app = typer.Typer(
    name="pidtrt",
    help="Deploy NVIDIA's PiD pixel-diffusion decoder: export, build TensorRT engines, decode, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("decode")(decode)
app.command("sample-latent")(sample_latent)

for _module, _name in (
    ("pid_trt.cli.convert", "convert"),
    ("pid_trt.cli.export", "export"),
    ("pid_trt.cli.build", "build"),
    ("pid_trt.cli.engines", "engines"),
    ("pid_trt.cli.bench", "bench"),
):
    try:
        _mod = __import__(_module, fromlist=[_name])
    except ModuleNotFoundError as _exc:  # command not written yet in this checkout
        if _exc.name != _module:
            raise
        continue
    _obj = getattr(_mod, _name)
    if isinstance(_obj, typer.Typer):
        app.add_typer(_obj, name=_name)
    else:
        app.command(_name)(_obj)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
