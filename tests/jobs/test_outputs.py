"""Output naming, resuming and sharding of a job list."""

from __future__ import annotations

from pathlib import Path

import pytest

from pid_trt.errors import ConfigError
from pid_trt.jobs import Job, assign_outputs, output_exists, shard, split_existing
from tests.jobs.helpers import colour_png, write_input


def _inputs(tmp_path: Path) -> list[Path]:
    return [
        write_input(tmp_path / "a" / "x.safetensors", "black"),
        write_input(tmp_path / "a" / "y.v2.safetensors", "white"),
        write_input(tmp_path / "b" / "z.safetensors", "black"),
    ]


@pytest.mark.parametrize("form", ["existing", "slash", "no-suffix"])
def test_directory_output_names_stem_png(tmp_path: Path, form: str) -> None:
    files = _inputs(tmp_path)
    out = tmp_path / "out"
    if form == "existing":
        out.mkdir()
    target = f"{out}/" if form == "slash" else out
    jobs = assign_outputs(files, target, single=False)
    assert [j.output for j in jobs] == [out / "x.png", out / "y.v2.png", out / "z.png"]
    assert [j.index for j in jobs] == [0, 1, 2] and [j.source for j in jobs] == files


def test_pattern_fills_stem_name_parent_and_index(tmp_path: Path) -> None:
    files = _inputs(tmp_path)
    jobs = assign_outputs(
        files, f"{tmp_path}/o/{{index}}-{{parent}}-{{stem}}-{{name}}.safetensors", single=False
    )
    assert [j.output.name for j in jobs] == [
        "0-a-x-x.safetensors.safetensors",
        "1-a-y.v2-y.v2.safetensors.safetensors",
        "2-b-z-z.safetensors.safetensors",
    ]


def test_one_file_output_only_for_one_input(tmp_path: Path) -> None:
    files = _inputs(tmp_path)
    assert assign_outputs(files[:1], tmp_path / "one.png", single=True) == [
        Job(files[0], tmp_path / "one.png", 0)
    ]
    with pytest.raises(ConfigError, match=r"names one file, but 3 latent files are given"):
        assign_outputs(files, tmp_path / "one.png", single=False)
    with pytest.raises(
        ConfigError, match=r"names one file, but 3 images are given.*out/\{stem\}.safetensors"
    ):
        assign_outputs(
            files, tmp_path / "one.png", single=False, what="images", default_suffix=".safetensors"
        )


def test_two_inputs_writing_one_output_are_refused_before_running(tmp_path: Path) -> None:
    a = write_input(tmp_path / "a" / "x.safetensors", "black")
    b = write_input(tmp_path / "b" / "x.safetensors", "white")
    with pytest.raises(ConfigError, match=r"would both write .*x\.png: add \{parent\} or \{index\}"):
        assign_outputs([a, b], tmp_path / "out", single=False)
    assert not (tmp_path / "out").exists()


def test_bad_pattern_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"bad pattern .*\{stem\}, \{name\}, \{parent\}, \{index\}"):
        assign_outputs(_inputs(tmp_path), f"{tmp_path}/{{stem}}_{{colour}}.png", single=False)


def test_batched_png_output_counts_as_existing_by_its_first_image(tmp_path: Path) -> None:
    src = write_input(tmp_path / "two.safetensors", "black", "white")
    job = assign_outputs([src], tmp_path / "out", single=False)[0]
    (tmp_path / "out").mkdir()
    assert not output_exists(job)
    colour_png(job)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["two_0.png", "two_1.png"]
    assert output_exists(job)
    other = Job(src, tmp_path / "out" / "other.png", 1)
    assert split_existing([other, job]) == ([other], [job])


def test_shard_partitions_deterministically_with_full_coverage() -> None:
    for n in range(0, 12):
        items = [f"job{i}" for i in range(n)]
        for world in range(1, 6):
            shares = [shard(items, rank, world) for rank in range(world)]
            assert shares == [shard(items, rank, world) for rank in range(world)]  # same list, same shares
            flat = [x for share in shares for x in share]
            assert sorted(flat) == sorted(items) and len(set(flat)) == len(flat)  # every job exactly once
            assert all(share == sorted(share, key=items.index) for share in shares)  # in list order
            assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced by count


@pytest.mark.parametrize(("rank", "world", "words"), [(2, 2, "rank 2: expected 0 .. 1"), (-1, 2, "rank -1"),
                                                      (0, 0, "world size 0")])  # fmt: skip
def test_shard_refuses_ranks_outside_the_world(rank: int, world: int, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        shard([1, 2, 3], rank, world)
