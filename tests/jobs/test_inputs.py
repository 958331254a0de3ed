"""Which input files arguments name: directories, glob patterns, plain files, each once."""

from __future__ import annotations

from pathlib import Path

from pid_trt.jobs import Problem, expand_inputs, is_single
from tests.jobs.helpers import write_input


def test_directory_gives_its_latent_files_sorted_not_recursive(tmp_path: Path) -> None:
    for name in ("b.safetensors", "a.safetensors", "notes.txt", "deep/c.safetensors"):
        write_input(tmp_path / name, "black")
    (tmp_path / "folder.safetensors").mkdir()  # a directory with the suffix is not a file
    files, problems = expand_inputs([tmp_path])
    assert files == [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    assert problems == []


def test_double_star_pattern_recurses_and_keeps_argument_order(tmp_path: Path) -> None:
    for name in ("z.safetensors", "x/y.safetensors", "x/w/v.safetensors", "x/w/v.txt"):
        write_input(tmp_path / name, "white")
    files, problems = expand_inputs([tmp_path / "z.safetensors", Path(f"{tmp_path}/x/**/*.safetensors")])
    assert files == [tmp_path / "z.safetensors", tmp_path / "x/w/v.safetensors", tmp_path / "x/y.safetensors"]
    assert problems == []


def test_file_named_twice_is_one_input(tmp_path: Path) -> None:
    a = write_input(tmp_path / "d/a.safetensors", "black")
    files, _ = expand_inputs([tmp_path / "d", a, Path(f"{tmp_path}/d/../d/a.safetensors")])
    assert files == [a]


def test_empty_directory_and_unmatched_pattern_are_problems_missing_file_is_kept(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = tmp_path / "missing.safetensors"
    files, problems = expand_inputs([empty, Path(f"{tmp_path}/nothing*"), missing])
    assert files == [missing]  # reading it reports it, by name, as a failed input
    assert problems == [
        Problem(str(empty), f"directory {empty} has no .safetensors file"),
        Problem(f"{tmp_path}/nothing*", f"no file matches '{tmp_path}/nothing*'"),
    ]


def test_other_suffixes_select_other_inputs(tmp_path: Path) -> None:
    for name in ("a.png", "b.jpg", "c.safetensors", "d.PNG"):
        write_input(tmp_path / name, "black")
    files, problems = expand_inputs([tmp_path], suffixes=(".png", ".jpg"))
    assert files == [tmp_path / "a.png", tmp_path / "b.jpg"]  # suffixes are case-sensitive
    files, problems = expand_inputs([tmp_path / "none"], suffixes=(".png", ".jpg"))
    assert problems == [] and files == [tmp_path / "none"]
    (tmp_path / "e").mkdir()
    assert expand_inputs([tmp_path / "e"], suffixes=(".png", ".jpg"))[1][0].message.endswith(
        "no .png or .jpg file"
    )


def test_single_means_one_argument_naming_one_file(tmp_path: Path) -> None:
    a = write_input(tmp_path / "a.safetensors", "black")
    assert is_single([a])
    assert is_single([tmp_path / "not-yet.safetensors"])
    assert not is_single([tmp_path])
    assert not is_single([Path(f"{tmp_path}/*.safetensors")])
    assert not is_single([a, a])
    assert not is_single([])
