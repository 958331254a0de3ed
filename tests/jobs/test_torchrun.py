"""Many-file ``pidtrt decode`` / ``encode-image`` under a real ``torchrun`` (two CPU ranks,
gloo), as a user starts it: the union of the ranks' outputs is the one-process run's, file for
file and bit for bit (both with one torch thread a process, so the float sums are the same);
a rank killed midway leaves only complete files and a restart with --skip-existing decodes
only the missing ones (and removes the dead ranks' temp files); RANK without WORLD_SIZE is refused before anything is written."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pid_trt.atomic import TEMP_PREFIX, host_tag
from tests.jobs.helpers import write_tiny_latents

BIN = Path(sys.executable).parent
TORCHRUN = BIN / "torchrun"
FILES = 8
TINY_ARGS = ("--backbone", "tiny", "--random-weights", "--threads", "1")

pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")


def clean_env() -> dict[str, str]:
    """This environment without torchrun's variables, with the venv's commands first on PATH."""
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"  # torchrun's default for its ranks; said here so it does not warn
    return env


def pidtrt(*args, **env) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "pidtrt"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env={**clean_env(), **env}, timeout=300)


def torchrun_cmd(*args) -> list[str]:
    # --standalone: a free local port for the rendezvous (tests may run beside other torchruns)
    return [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "--no-python", "pidtrt", *map(str, args)]


def torchrun(*args, **env) -> subprocess.CompletedProcess:
    cmd = torchrun_cmd(*args)
    return subprocess.run(cmd, capture_output=True, text=True, env={**clean_env(), **env}, timeout=300)


def outputs(folder: Path) -> dict[str, bytes]:
    """The finished files of a folder (not the temp files a killed process may leave)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(TEMP_PREFIX)}


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> Path:
    """Eight tiny-preset latent files (8x8 latents, 256x256 images) with captions."""
    return write_tiny_latents(tmp_path_factory.mktemp("latents"), FILES, cells=8, seed=0)


@pytest.fixture(scope="module")
def one_process(latents, tmp_path_factory) -> dict[str, bytes]:
    """The reference: the same command as one process."""
    out = tmp_path_factory.mktemp("one") / "out"
    res = pidtrt("decode", latents, "-o", f"{out}/", *TINY_ARGS)
    assert res.returncode == 0, res.stderr
    assert f"decoded {FILES}, skipped 0 (output exists), failed 0 of {FILES}" in res.stdout
    assert "ranks" not in res.stdout
    return outputs(out)


def test_two_ranks_write_the_one_process_files_bit_for_bit(latents, one_process, tmp_path) -> None:
    out = tmp_path / "out"
    res = torchrun("decode", latents, "-o", f"{out}/", *TINY_ARGS)
    assert res.returncode == 0, res.stderr
    got = outputs(out)
    assert sorted(got) == sorted(one_process) == [f"lat{i}.png" for i in range(FILES)]
    assert [name for name in got if got[name] != one_process[name]] == []
    # rank 0 prints the one summary of the whole run; the ranks' progress is rank 0's bar only
    lines = res.stdout.splitlines()
    assert len(lines) == 1, res.stdout
    assert lines[0].startswith(f"decoded {FILES}, skipped 0 (output exists), failed 0 of {FILES} in ")
    assert lines[0].endswith("(torch, 2 ranks)")
    assert "rank 0 of 2" in res.stderr and "rank 1" not in res.stderr
    assert res.stderr.count("--random-weights") == 1


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (torchrun's ranks)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's ranks through /proc")
@pytest.mark.slow
def test_a_killed_run_restarts_and_decodes_only_what_is_missing(latents, one_process, tmp_path) -> None:
    out = tmp_path / "out"
    log = (tmp_path / "run.log").open("w")
    run = subprocess.Popen(
        torchrun_cmd("decode", latents, "-o", f"{out}/", *TINY_ARGS), stdout=log, stderr=log, env=clean_env()
    )
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and outputs(out)) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        ranks = _children(run.pid)
        assert len(ranks) == 2, f"torchrun's ranks: {ranks}"
        os.kill(ranks[1], signal.SIGKILL)  # one rank dies midway; torchrun stops the other
        assert run.wait(timeout=60) != 0
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        log.close()
    before = outputs(out)
    assert 0 < len(before) < FILES, f"the run was not stopped midway: {sorted(before)}"
    # what is there is complete: each file is the one-process run's
    assert [name for name in before if before[name] != one_process[name]] == []
    mtimes = {name: (out / name).stat().st_mtime_ns for name in before}
    # a temp file of the killed rank (named as pid_trt.atomic names them) beside whatever it left
    (out / f"{TEMP_PREFIX}lat{FILES - 1}.png.{ranks[1]}-{host_tag()}.0123abcd").write_bytes(b"half")

    res = torchrun("decode", latents, "-o", f"{out}/", *TINY_ARGS, "--skip-existing")
    assert res.returncode == 0, res.stderr
    assert [p.name for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)] == []  # dead writers' leftovers
    missing = FILES - len(before)
    assert res.stdout.startswith(
        f"decoded {missing}, skipped {len(before)} (output exists), failed 0 of {FILES} in "
    ), res.stdout
    assert outputs(out) == one_process
    assert {name: (out / name).stat().st_mtime_ns for name in before} == mtimes  # finished files not redone


@pytest.mark.slow  # another two-rank torchrun run; the quick tier keeps test_two_ranks_write_the_one_process_files_bit_for_bit
def test_a_failed_input_on_any_rank_fails_every_rank_and_is_reported_once(latents, tmp_path) -> None:
    """The two ranks started by hand with torchrun's variables, to see each one's exit code."""
    bad = tmp_path / "in"
    bad.mkdir()
    for i in range(3):
        (bad / f"lat{i}.safetensors").write_bytes((latents / f"lat{i}.safetensors").read_bytes())
    (bad / "lat1.safetensors").write_bytes(b"not a safetensors file")  # rank 1's input
    out = tmp_path / "out"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ranks = [
        subprocess.Popen(
            [str(BIN / "pidtrt"), "decode", str(bad), "-o", f"{out}/", *TINY_ARGS],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **clean_env(),
                "RANK": str(r),
                "WORLD_SIZE": "2",
                "LOCAL_RANK": str(r),
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
        )  # fmt: skip
        for r in range(2)
    ]
    (out0, err0), (out1, err1) = (p.communicate(timeout=300) for p in ranks)
    assert [p.returncode for p in ranks] == [2, 2], (err0, err1)
    assert sorted(outputs(out)) == ["lat0.png", "lat2.png"]
    lines = out0.splitlines()
    assert lines[0].startswith("decoded 2, skipped 0 (output exists), failed 1 of 3 in ")
    assert len(lines) == 2 and lines[1].startswith("failed: ") and "lat1.safetensors" in lines[1]
    assert out1 == ""  # rank 1 prints nothing but its own error
    assert err1.startswith("error: rank 1: ") and "lat1.safetensors" in err1 and len(err1.splitlines()) == 1


def test_rank_without_world_size_is_refused_in_one_line(latents, tmp_path) -> None:
    out = tmp_path / "out"
    res = pidtrt("decode", latents, "-o", f"{out}/", *TINY_ARGS, RANK="1")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: RANK=1 is set without WORLD_SIZE: a multi-process run (torchrun) sets both; "
        "unset RANK to run as one process"
    ]
    assert not out.exists()


@pytest.mark.slow
def test_encode_image_two_ranks_equal_one_process(tmp_path) -> None:
    """Three images, two sigmas each, on a tiny random FLUX VAE: each image's noise seed is
    its place in the whole run, so the ranks' latents are the one-process run's."""
    import numpy as np
    from PIL import Image

    from tests.integrations import diffusers_helpers as helpers

    vae = tmp_path / "vae"
    helpers.flux_vae().save_pretrained(vae)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photos / name)
    args = (photos, "--vae", vae, "--backbone", "flux", "--degrade-sigma", "0,0.5", "--threads", "1")
    from typer.testing import CliRunner

    from pid_trt.cli.main import app

    threads = torch.get_num_threads()
    try:  # the reference in this process (the VAE's libraries are loaded here already)
        one = CliRunner().invoke(app, ["encode-image", *map(str, args), "-o", f"{tmp_path / 'one'}/"])
    finally:
        torch.set_num_threads(threads)
    assert one.exit_code == 0, one.output
    two = torchrun("encode-image", *args, "-o", f"{tmp_path / 'two'}/")
    assert two.returncode == 0, two.stderr
    assert two.stdout.startswith("encoded 3, skipped 0 (output exists), failed 0 of 3 in ")
    ref, got = outputs(tmp_path / "one"), outputs(tmp_path / "two")
    assert len(ref) == 6 and got == ref


@pytest.mark.xfail(
    strict=False,
    reason="open: once, in a fresh-clone full-suite run, rank 1 (one prompt) aborted with libstdc++'s "
    "'terminate called without an active exception' (a native std::thread destroyed while joinable) after "
    "rank 0 had finished its two prompts; not reproduced in 17 runs alone or two at a time on the loaded "
    "2-core machine; ranks now leave the gloo group together, run without the tokenizers thread pool and "
    "print every thread's Python stack on a fatal signal (see NOTES)",
)
@pytest.mark.slow
def test_generate_two_ranks_equal_one_process(tmp_path) -> None:
    """Three prompts on a tiny random FLUX.1 pipeline and PiD: the ranks' images are the
    one-process run's (prompt i keeps seed + i) and rank 0's manifest lists every prompt."""
    import json

    from typer.testing import CliRunner

    from pid_trt.cli.main import app
    from tests.integrations import diffusers_helpers as helpers

    flux = helpers.make_flux_dir(tmp_path / "flux")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\nthe lazy dog\na cat at sunset\n")
    args = ["generate", "--pipeline", str(flux), "--prompts-file", str(prompts), "--pid", "tiny",
            "--random-weights", "--res", "64", "--steps", "4", "--capture-step", "2", "--threads", "1"]  # fmt: skip
    threads = torch.get_num_threads()
    try:  # the reference in this process
        one = CliRunner().invoke(app, [*args, "-o", f"{tmp_path / 'one'}/"], env={"PIDTRT_TEXT_ENCODER": ""})
    finally:
        torch.set_num_threads(threads)
    assert one.exit_code == 0, one.output
    res = torchrun(*args, "-o", f"{tmp_path / 'two'}/", PIDTRT_TEXT_ENCODER="")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("generated 3, skipped 0 (output exists), failed 0 of 3 in "), res.stdout

    def pngs(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}

    ref, got = pngs(tmp_path / "one"), pngs(tmp_path / "two")
    assert len(ref) == 3 and got == ref
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert [(e["prompt"], e["seed"], e["status"]) for e in manifest["prompts"]] == [
        ("a red fox", 0, "done"),
        ("the lazy dog", 1, "done"),
        ("a cat at sunset", 2, "done"),
    ]
    assert manifest["counts"]["done"] == 3


@pytest.mark.slow
def test_decode_compare_vae_two_ranks_equal_one_process(tmp_path) -> None:
    """--compare-vae under torchrun: each rank writes its files' VAE images, pairs and records,
    the same bytes as one process; rank 0's compare_vae.json lists every file with its drift."""
    import json

    from tests.integrations import diffusers_helpers as helpers

    vae = tmp_path / "vae"
    helpers.flux_vae().save_pretrained(vae)
    src = write_tiny_latents(tmp_path / "lat", 3, cells=4, seed=3, backbone="flux")
    args = ("decode", src, *TINY_ARGS, "--compare-vae", "--vae", vae)
    one = pidtrt(*args, "-o", f"{tmp_path / 'one'}/")
    assert one.returncode == 0, one.stderr
    two = torchrun(*args, "-o", f"{tmp_path / 'two'}/")
    assert two.returncode == 0, two.stderr
    assert two.stdout.startswith("decoded 3, skipped 0 (output exists), failed 0 of 3 in "), two.stdout
    ref, got = outputs(tmp_path / "one"), outputs(tmp_path / "two")
    images = sorted(n for n in ref if n.endswith(".png"))
    assert len(images) == 9 and sorted(n for n in got if n.endswith(".png")) == images
    assert [n for n in images if got[n] != ref[n]] == []
    manifest = json.loads((tmp_path / "two" / "compare_vae.json").read_text())
    assert manifest["counts"] == {"files": 3, "done": 3, "skipped": 0, "failed": 0, "missing": 0}
    reference = json.loads((tmp_path / "one" / "compare_vae.json").read_text())
    assert [e["colour_drift"] for e in manifest["files"]] == [e["colour_drift"] for e in reference["files"]]
