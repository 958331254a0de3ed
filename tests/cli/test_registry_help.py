"""Help texts list what the registries hold (no backend or preset name typed by hand), and
``pidtrt serve``'s GPU ids are ``--gpus``, the old ``--devices`` still taken but hidden."""

from __future__ import annotations

from typer.testing import CliRunner

from pid_trt.backends.registry import BACKENDS, backend_class
from pid_trt.cli import reference
from pid_trt.cli.main import app
from pid_trt.config import Backbone
from pid_trt.integrations.ldm import ldm_names


def _help(command: str, flag: str) -> str:
    for param in reference.root_command().commands[command].params:
        if param.param_type_name == "option" and flag in param.opts:
            return param.help or ""
    raise AssertionError(f"pidtrt {command} has no {flag}")


def test_help_names_every_registered_backend_and_preset() -> None:
    for command in ("decode", "bench"):
        backend = _help(command, "--backend")
        assert all(name in backend for name in BACKENDS), (command, backend)
    preset = _help("decode", "--backbone")
    assert [b.value for b in Backbone] == preset.removeprefix("Preset: ").rstrip(".").split(", ")
    ldm = _help("generate", "--backbone")
    assert all(name in ldm for name in ldm_names()), ldm
    # the default precision of each backend on each of its devices is the one the help gives
    precision = _help("decode", "--precision")
    for name in BACKENDS:
        cls = backend_class(name)
        for device in cls.devices:
            value = cls.default_precision(device).value
            assert f"{name} {value}" in precision or f"{device} {value}" in precision, (
                name,
                device,
                precision,
            )
    cuda_only = [n for n in BACKENDS if "cpu" not in backend_class(n).devices]
    assert f"default: cuda for {' or '.join(cuda_only)}, else cpu" in _help("decode", "--device")


def test_serve_takes_gpus_and_the_hidden_old_spelling() -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}, terminal_width=200).output
    assert "--gpus" in shown and "--devices" not in shown
    for flag in ("--gpus", "--devices"):
        res = runner.invoke(app, ["serve", "--backbone", "tiny", "--random-weights", flag, "zero"])
        assert res.exit_code == 2, res.output
        assert res.output.strip().splitlines()[-1] == (
            "error: --gpus 'zero': expected GPU ids separated by commas, e.g. 0,1"
        )
    both = runner.invoke(
        app, ["serve", "--backbone", "tiny", "--random-weights", "--gpus", "0", "--devices", "1"]
    )
    assert both.exit_code == 2
    assert both.output.strip().splitlines()[-1] == (
        "error: --gpus and --devices (its old spelling) given together: pass --gpus"
    )
