"""``devices=`` / ``--devices``: the tile batches of one decode dealt round-robin over one
backend per device, run concurrently, blended on the decode's device. On the CPU, ``cpu,cpu``
(two torch backends, two threads) gives the one-device decode bit for bit; bad device lists are
refused in one line before any weight is read."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pid_trt import Decoder
from pid_trt.errors import BackendUnavailableError, ConfigError
from pid_trt.io import write_latent_file
from pid_trt.model import PidNet
from pid_trt.options import NetOptions, RuntimeOptions


@pytest.fixture(scope="module")
def tiny():
    with Decoder.load(backbone="tiny", random_weights=True) as dec:
        yield dec


def _latent(seed: int, h: int = 6, w: int = 8, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 16, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("tile_batch", "batch"), [(1, 1), (2, 1), (1, 2)])
def test_two_cpu_backends_equal_one_device_bit_for_bit(tiny, tile_batch: int, batch: int) -> None:
    """tile batch 1: 4 batches, 2 per device (re-bound every step); 2: one batch per device
    (bound once); image batch 2: tiles of both rows dealt over the devices."""
    lat = _latent(5, batch=batch)
    one = tiny.decode(lat, seed=7, tiles="2x2", tile_batch=tile_batch)
    spread = tiny.decode(lat, seed=7, tiles="2x2", tile_batch=tile_batch, devices="cpu,cpu")
    assert torch.equal(spread, one)
    assert ("device", 1, "cpu") in tiny.cached_sizes()  # the second device's own backend


def test_each_device_runs_on_its_own_thread(tiny, monkeypatch) -> None:
    """Each device's batches run on their own thread (network steps seen from two threads)."""
    seen: set[str] = set()
    original = PidNet.step

    def step(self, *args, **kwargs):
        seen.add(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PidNet, "step", step)
    tiny.decode(_latent(6), seed=1, tiles="2x1", devices="cpu,cpu")
    assert {name.rsplit("_", 1)[0] for name in seen} == {"pid-tiles-0", "pid-tiles-1"}


def test_bad_devices_are_one_line_errors_before_weights(tmp_path: Path) -> None:
    junk = tmp_path / "model_ema_bf16.pth"
    junk.write_bytes(b"not a checkpoint")
    lat, cap = torch.zeros(1, 16, 8, 8), torch.zeros(1, 300, 2304)
    with Decoder.load(backbone="flux", checkpoint=junk) as dec:
        for kwargs, error, match in (
            (dict(tiles="2x2", devices="gpu0"), ConfigError, r"^--devices 'gpu0': expected cpu or cuda$"),
            (dict(tiles="2x2", devices="cpu,"), ConfigError, r"^--devices 'cpu,': expected device names"),
            (dict(tiles="off", devices="cpu,cpu"), ConfigError, r"^--devices with --tiles off: expected"),
        ):
            with pytest.raises(error, match=match) as err:
                dec.decode(lat, cap, **kwargs)
            assert "\n" not in str(err.value)
        if not torch.cuda.is_available():
            with pytest.raises(
                BackendUnavailableError, match=r"^--devices cuda:1: torch:fp32 on cuda:1 runs on"
            ):
                dec.decode(lat, cap, tiles="2x2", devices="cpu,cuda:1")
        assert dec.cached_sizes() == []
    spec = NetOptions(backbone="tiny", random_weights=True).resolve()
    trt = Decoder(spec, RuntimeOptions(backend="tensorrt"))  # never touches CUDA before the refusal
    with pytest.raises(ConfigError, match=r"^--devices cpu: the tensorrt backend runs on cuda$"):
        trt.plan(128, 128, tiles="2x2", devices="cpu")


# slow: two pidtrt processes (~8 s); the in-process two-device cases above stay quick
@pytest.mark.slow
def test_cli_devices_cpu_cpu_equals_one_device(tmp_path: Path) -> None:
    latent = tmp_path / "l.safetensors"
    write_latent_file(latent, _latent(8))
    outs = []
    for extra in ([], ["--devices", "cpu,cpu"]):
        out = tmp_path / f"out{len(outs)}.safetensors"
        cmd = [sys.executable, "-m", "pid_trt.cli.main", "decode", str(latent), "-o", str(out), "--backbone",
               "tiny", "--random-weights", "--tiles", "2x2", "--seed", "3", *extra]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        assert res.returncode == 0, res.stderr
        outs.append(load_file(out)["image"])
    assert torch.equal(outs[0], outs[1])
    bad = tmp_path / "bad.png"
    cmd = [sys.executable, "-m", "pid_trt.cli.main", "decode", str(latent), "-o", str(bad), "--backbone", "tiny",
           "--random-weights", "--tiles", "off", "--devices", "cpu,cpu"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --devices with --tiles off: expected --tiles auto or COLSxROWS"]
    assert not bad.exists()
