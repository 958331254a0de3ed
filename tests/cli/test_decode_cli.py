"""`pidtrt decode` as a user runs it: golden parity through the CLI, and bad input handling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pid_trt.checkpoints import CONFIG_METADATA_KEY
from pid_trt.config import TINY
from pid_trt.io import write_latent_file, write_noise_file
from pid_trt.verify.golden import load_golden
from tests.conftest import GOLDEN, golden_case

IMAGE_TOL = 1e-4  # golden README: torch reference, float32, CPU


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed console entry point in a fresh interpreter."""
    cmd = [sys.executable, "-m", "pid_trt.cli.main", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600)


def golden_case_files(path: Path, tmp: Path) -> tuple[Path, Path, Path, torch.Tensor]:
    """Write a golden case as the user-facing files: checkpoint, latent file, noise file."""
    case = load_golden(path)  # fails naming the path when the file is missing
    tensors, config = case.tensors, case.config
    weights = {k.removeprefix("weights/"): v for k, v in tensors.items() if k.startswith("weights/")}
    ckpt = tmp / "ckpt.safetensors"
    save_file(
        {f"net.{k}": v.contiguous() for k, v in weights.items()},
        str(ckpt),
        metadata={CONFIG_METADATA_KEY: config.to_json()},
    )
    latent = tmp / "latent.safetensors"
    write_latent_file(latent, tensors["in/lq_latent"], tensors["in/y"], tensors["in/degrade_sigma"])
    noise = tmp / "noise.safetensors"
    write_noise_file(noise, [tensors[f"sampler/noise{i}"] for i in range(4)])
    return ckpt, latent, noise, tensors["out/image"]


@pytest.mark.parametrize("path", GOLDEN[:2] + GOLDEN[-1:], ids=lambda p: p.stem)
@pytest.mark.slow  # a CLI process per golden file, ~18 s each; tests/model/test_golden.py checks the same in process
def test_decode_cli_matches_golden_image(path: Path, tmp_path: Path) -> None:
    ckpt, latent, noise, expected = golden_case_files(path, tmp_path)
    out = tmp_path / "image.safetensors"
    res = run_cli("decode", latent, "-o", out, "--checkpoint", ckpt, "--noise", noise)
    assert res.returncode == 0, res.stderr
    got = load_file(str(out))["image"]
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= IMAGE_TOL


def test_decode_cli_writes_png_per_batch_item(tmp_path: Path) -> None:
    ckpt, latent, noise, expected = golden_case_files(golden_case("v1_flux_wide_b2"), tmp_path)
    res = run_cli("decode", latent, "-o", tmp_path / "img.png", "--checkpoint", ckpt, "--noise", noise)
    assert res.returncode == 0, res.stderr
    import numpy as np
    from PIL import Image

    for i in range(expected.shape[0]):
        png = np.asarray(Image.open(tmp_path / f"img_{i}.png"))
        ref = np.floor((expected[i].clamp(-1, 1).double().numpy().transpose(1, 2, 0) + 1) * 127.5).clip(
            0, 255
        )
        # floor() may flip by one level where the image sits within 1e-4 of a level boundary
        assert np.abs(png.astype(int) - ref.astype(int)).max() <= 1


# ----------------------------------------------------------------------------- bad input
def _tiny_latent(tmp: Path, **over) -> Path:
    gen = torch.Generator().manual_seed(0)
    fields = dict(
        latent=torch.randn(1, TINY.lq_latent_channels, 2, 2, generator=gen),
        caption=torch.randn(1, TINY.txt_max_length, TINY.txt_embed_dim, generator=gen),
        degrade_sigma=torch.zeros(1),
    )
    fields.update(over)
    p = tmp / "lat.safetensors"
    write_latent_file(p, fields["latent"], fields["caption"], fields["degrade_sigma"])
    return p


BAD_CASES = {
    "nan": dict(latent=torch.full((1, 16, 2, 2), float("nan"))),
    "channels": dict(latent=torch.randn(1, 4, 2, 2)),
    "rank": dict(latent=torch.randn(16, 2)),
    "int_dtype": dict(latent=torch.ones(1, 16, 2, 2, dtype=torch.int32)),
    "sigma_range": dict(degrade_sigma=torch.tensor([1.5])),
    "caption_width": dict(caption=torch.randn(1, 8, 33)),
    "batch_mismatch": dict(caption=torch.randn(3, 8, 32)),
    "empty": dict(latent=torch.randn(1, 16, 0, 2)),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
@pytest.mark.slow  # a CLI process per bad file, ~10 s each on 2 cores; the readers' own tests check each refusal in process
def test_decode_cli_bad_latent_is_one_line_error(case: str, tmp_path: Path) -> None:
    latent = _tiny_latent(tmp_path, **BAD_CASES[case])
    out = tmp_path / "out.png"
    res = run_cli("decode", latent, "-o", out, "--backbone", "tiny", "--random-weights")
    assert res.returncode != 0
    lines = [line for line in res.stderr.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in res.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pidtrt-tmp")]


@pytest.mark.slow  # three CLI processes; tests/io/test_latent_file.py refuses missing, garbage and truncated files in process
def test_decode_cli_missing_and_garbage_files(tmp_path: Path) -> None:
    res = run_cli(
        "decode",
        tmp_path / "nope.safetensors",
        "-o",
        tmp_path / "o.png",
        "--backbone",
        "tiny",
        "--random-weights",
    )
    assert res.returncode != 0 and "not found" in res.stderr and "Traceback" not in res.stderr
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(64))
    res = run_cli("decode", junk, "-o", tmp_path / "o.png", "--backbone", "tiny", "--random-weights")
    assert res.returncode != 0 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    trunc = _tiny_latent(tmp_path)
    trunc.write_bytes(trunc.read_bytes()[:-40])
    res = run_cli("decode", trunc, "-o", tmp_path / "o.png", "--backbone", "tiny", "--random-weights")
    assert res.returncode != 0 and "Traceback" not in res.stderr


def test_decode_cli_keeps_existing_output_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "keep.png"
    out.write_bytes(b"precious")
    latent = _tiny_latent(tmp_path, latent=torch.full((1, 16, 2, 2), float("inf")))
    res = run_cli("decode", latent, "-o", out, "--backbone", "tiny", "--random-weights")
    assert res.returncode != 0
    assert out.read_bytes() == b"precious"


@pytest.mark.slow  # a CLI process; in process: tests/test_decoder.py::test_released_preset_needs_a_caption_and_prompt_needs_an_encoder
def test_released_preset_without_caption_says_how_to_supply_one(tmp_path: Path) -> None:
    lat = tmp_path / "lat.safetensors"
    write_latent_file(lat, torch.randn(1, 16, 2, 2))
    res = run_cli("decode", lat, "-o", tmp_path / "o.png", "--backbone", "flux", "--random-weights")
    assert res.returncode != 0
    assert "caption_embedding" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow  # a CLI process loading the flux preset; the quick tier keeps the CLI's one-line refusals in test_decode_cli_keeps_existing_output_on_failure
def test_released_preset_without_weights_points_to_download(tmp_path: Path) -> None:
    lat = tmp_path / "lat.safetensors"
    write_latent_file(lat, torch.randn(1, 16, 2, 2), torch.randn(300, 2304))
    res = run_cli("decode", lat, "-o", tmp_path / "o.png", "--backbone", "flux")
    assert res.returncode != 0
    assert "hf download nvidia/PiD" in res.stderr


@pytest.mark.slow  # three CLI decodes; the quick tier decodes through the CLI (README's first steps, test_decode_cli_writes_png_per_batch_item) and checks seeds in process (tests/test_sampling.py)
def test_tiny_random_weights_decode_and_seed_reproducible(tmp_path: Path) -> None:
    lat = _tiny_latent(tmp_path)
    outs = []
    for i, seed in enumerate((3, 3, 4)):
        o = tmp_path / f"o{i}.safetensors"
        res = run_cli("decode", lat, "-o", o, "--backbone", "tiny", "--random-weights", "--seed", seed)
        assert res.returncode == 0, res.stderr
        assert "randomly initialised" in res.stderr
        outs.append(load_file(str(o))["image"])
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])
    assert outs[0].shape == (1, 3, 64, 64) and outs[0].abs().max() <= 1


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_onnxruntime_cpu_refuses_bf16_graphs_before_exporting(dtype: str, tmp_path: Path) -> None:
    """ORT's CPU provider has no bfloat16 kernels (fp8 graphs are bf16 around the FP8 GEMMs):
    one line, exit 3, and no minutes-long export of a graph it could not run."""
    lat = _tiny_latent(tmp_path)
    res = run_cli("decode", lat, "-o", tmp_path / "o.png", "--backbone", "tiny", "--random-weights",
                  "--backend", "onnxruntime", "--precision", dtype, "--export-dir", tmp_path / "exp")  # fmt: skip
    assert res.returncode == 3, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"--precision {dtype}" in errors[0] and "fp16" in errors[0], res.stderr
    assert "Traceback" not in res.stderr and "exporting" not in res.stderr
    assert not (tmp_path / "o.png").exists() and not list(tmp_path.glob("exp/*"))


@pytest.mark.slow  # a fresh interpreter rendering every command's help with the optional runtimes blocked; tests/backends/test_registry.py checks in a quicker child that a backend class imports none
def test_help_works_without_optional_runtimes() -> None:
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in ('tensorrt', 'tensorrt_rtx', 'onnxruntime', 'modelopt'):\n"
        "        raise ModuleNotFoundError(name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "from pid_trt.cli.main import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner()\n"
        "cmds = [c.name for c in app.registered_commands] + [g.name for g in app.registered_groups]\n"
        "assert r.invoke(app, ['--help']).exit_code == 0\n"
        "for c in cmds:\n"
        "    res = r.invoke(app, [c, '--help'])\n"
        "    assert res.exit_code == 0, (c, res.output)\n"
        "print(len(cmds))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.strip()) >= 3


def test_decode_server_refuses_devices_in_one_line(tmp_path: Path) -> None:
    """`--server` takes the tiling options (they go with the requests) but `--devices`: the
    server places its own devices. Refused before any request (nothing listens on port 9)."""
    latent = tmp_path / "lat.safetensors"
    write_latent_file(latent, torch.zeros(1, 16, 3, 4))
    before = sorted(p.name for p in tmp_path.iterdir())
    res = run_cli("decode", latent, "--server", "http://127.0.0.1:9", "--tiles", "2x2", "--devices", "cpu,cpu",
                  "-o", tmp_path / "out.png")  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr == (
        "error: --server decodes with the server's model and settings: drop --devices "
        "(the server places its own devices: pidtrt serve --gpus)\n"
    )
    assert res.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == before
