"""Leftover temp files of a killed run: told apart by their writer (a pid on this host that
is gone, else their age), removed only for the run's own outputs, by a rerun of the real
``pidtrt decode`` over many files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pid_trt.atomic import TEMP_PREFIX, host_tag, parse_temp_name, remove_stale_temps, temp_path_for
from pid_trt.cli.main import app
from pid_trt.jobs import Job
from pid_trt.jobs.stale import owned_names, remove_stale_outputs
from tests.jobs.helpers import write_tiny_latents


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def live_pid():
    """The pid of a running process (not this one)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield child.pid
    child.kill()
    child.wait()


def temp(folder: Path, target: str, pid: int | None, host: str | None = "here", age_s: float = 0.0) -> Path:
    """A temp file as :func:`temp_path_for` names it, by ``pid`` on ``host`` ("here": this
    host; None: the older name without a host tag), last modified ``age_s`` ago."""
    tag = host_tag() if host == "here" else host
    writer = "" if pid is None else f".{pid}" + (f"-{tag}" if tag else "")
    path = folder / f"{TEMP_PREFIX}{target}{writer}.0123abcd"
    path.write_bytes(b"half a file")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def test_temp_names_say_target_pid_and_host(tmp_path):
    path = temp_path_for(tmp_path / "a.b_0.png")
    assert path.parent == tmp_path and path.name.startswith(f"{TEMP_PREFIX}a.b_0.png.{os.getpid()}-")
    parsed = parse_temp_name(path.name)
    assert (parsed.target, parsed.pid, parsed.host) == ("a.b_0.png", os.getpid(), host_tag())
    assert host_tag("node-a") != host_tag("node-b") and len(host_tag()) == 8
    old = parse_temp_name(f"{TEMP_PREFIX}x.png.123.89abcdef")  # the name before host tags
    assert (old.target, old.pid, old.host) == ("x.png", 123, None)
    assert parse_temp_name(f"{TEMP_PREFIX}junk").pid is None and parse_temp_name("x.png") is None


def test_only_gone_writers_temp_files_of_owned_targets_go(tmp_path, dead_pid, live_pid):
    gone = [
        temp(tmp_path, "a.png", dead_pid),  # this host, the writer has exited
        temp(tmp_path, "a_vae.png", dead_pid),
        temp(tmp_path, "a.png", 4242, host="0badc0de", age_s=3600),  # another host, from before the run
        temp(tmp_path, "a_1.png", 4242, host=None, age_s=3600),  # older name: writer unknown, old
        temp(tmp_path, "a.png", None, age_s=3600),  # no pid at all, old
    ]
    kept = [
        temp(tmp_path, "a.png", live_pid),  # a live writer (another rank)
        temp(tmp_path, "a_0.png", os.getpid()),  # this process's own
        temp(tmp_path, "a.png", 4343, host="0badc0de", age_s=5),  # another host's, written in this run
        temp(tmp_path, "a.png", dead_pid, host=None),  # writer unknown (no host), recent
        temp(tmp_path, "b.png", dead_pid),  # not this run's output
        temp(tmp_path, "ab.png", dead_pid),  # "a" + something else is another input's
    ]
    other = tmp_path / "a.png"
    other.write_bytes(b"a finished output")
    started = time.time()
    removed = remove_stale_outputs([Job(tmp_path / "in" / "a.safetensors", tmp_path / "a.png")], started)
    assert sorted(removed) == sorted(gone)
    assert sorted(p for p in tmp_path.iterdir() if p.is_file()) == sorted([*kept, other])


def test_owned_names_cover_the_companions_of_an_output_and_its_input():
    owns = owned_names(Job(Path("in/img.png"), Path("out/img_sigma0.800.safetensors")))
    assert owns("img_sigma0.800.safetensors") and owns("img_sigma0.000.safetensors")  # the input's stem
    assert not owns("imgx_sigma0.000.safetensors") and not owns("other.safetensors")
    owns = owned_names(Job("a prompt", Path("out/0001-a-prompt/generation.json")))
    assert owns("generation.json") and not owns("step2.png")
    assert remove_stale_temps(Path("/nonexistent-folder"), lambda name: True, time.time()) == []


def test_a_rerun_removes_a_killed_writers_temp_files_and_completes(tmp_path, dead_pid, live_pid):
    """The real CLI over three latent files: the first run's outputs, one deleted and a dead
    writer's temp file of it left (as a killed run leaves them), then a rerun with
    --skip-existing: the stale file is gone, every output is there, a live writer's is kept."""
    src = write_tiny_latents(tmp_path / "lat", 3, cells=2, seed=0)
    out = tmp_path / "out"
    args = ["decode", str(src), "-o", f"{out}/", "--backbone", "tiny", "--random-weights", "--threads", "1"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    (out / "lat1.png").unlink()
    stale = [temp(out, "lat1.png", dead_pid), temp(out, "lat2.png", dead_pid)]  # lat2's output exists
    live = temp(out, "lat1.png", live_pid)
    res = CliRunner().invoke(app, [*args, "--skip-existing"])
    assert res.exit_code == 0, res.output
    assert "decoded 1, skipped 2 (output exists)" in res.stdout
    assert not any(p.exists() for p in stale) and live.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(["lat0.png", "lat1.png", "lat2.png", live.name])
