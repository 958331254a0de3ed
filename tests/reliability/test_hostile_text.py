"""Hostile text in every field of every reader: ESC sequences, CR, NUL, BEL, C1 controls,
U+202E and other invisible format characters, a 10 kB name. Each refusal is one line of
printable characters, capped, naming the field, with the hostile value shown escaped
(``\\x1b``, ``\\r``, ``\\u202e``), and raises the reader's usual error type.

Readers: the safetensors header (tensor names, dtype, shape, data_offsets, ``__metadata__``,
duplicate names) of latent, noise, caption, checkpoint and RAE statistics files; a
checkpoint's net-config metadata; RAE statistics as a torch file; engine manifests (fields,
key fields, file names) and their listing; JSON-lines manifests and prompts files (their
paths); served requests' parameters and ids. The CLI runs are in tests/cli/test_hostile_cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pid_trt.checkpoints import CONFIG_METADATA_KEY, load_checkpoint
from pid_trt.config import TINY
from pid_trt.errors import CheckpointError, InputFileError, PidTrtError, StoreError
from pid_trt.integrations.rae_stats import read_rae_stats
from pid_trt.io import read_latent_file, read_noise_file
from pid_trt.io.caption import read_caption_file
from pid_trt.jobs.manifest import read_manifest
from pid_trt.jobs.prompts import read_prompts_file
from pid_trt.serve.protocol import error_text, png_encoding, request_label
from pid_trt.stores.listing import engine_row
from pid_trt.stores.store import EngineStore
from pid_trt.tiling.options import TileOptions
from tests.message_helpers import assert_printable_line
from tests.reliability.conftest import raw_safetensors
from tests.stores.test_store import make_key, write_plan

#: name -> (hostile text, how a message must show it). Written by hand, not by the helper.
HOSTILE = {
    "esc": ("\x1b[2J\x1b[31mgone", "\\x1b[2J\\x1b[31mgone"),
    "cr": ("fine\roverwritten", "fine\\roverwritten"),
    "nul": ("a\x00b", "a\\x00b"),
    "bel": ("ring\x07", "ring\\x07"),
    "c1": ("x\x9b31m", "x\\x9b31m"),
    "rlo": ("name\u202egnp.exe", "name\\u202egnp.exe"),
    "invisible": ("a\u200bb\ufeff\u2066c", "a\\u200bb\\ufeff\\u2066c"),
    "long": ("n" * 10_000, "… (10000 characters)"),
}
IDS = list(HOSTILE)


def refusal(error: type[Exception], fn, *args) -> str:
    with pytest.raises(error) as info:
        fn(*args)
    return str(info.value)


def check(message: str, hostile: str, *fields: str) -> None:
    """One printable line, capped, naming ``fields``, showing ``hostile`` escaped."""
    assert_printable_line(message, names=(*fields, HOSTILE[hostile][1]))


# ----------------------------------------------------------------- safetensors headers
#: reader -> (read function, error type, the tensor key its files hold, extra metadata).
READERS = {
    "latent": (read_latent_file, InputFileError, "latent", {}),
    "noise": (lambda p: read_noise_file(p, 1, 1, 4, 4), InputFileError, "noise", {}),
    "caption": (lambda p: read_caption_file(p, TINY, 1), InputFileError, "caption_embedding", {}),
    "checkpoint": (
        lambda p: load_checkpoint(p, None),
        CheckpointError,
        "x",
        {CONFIG_METADATA_KEY: TINY.to_json()},
    ),
    "rae_stats": (read_rae_stats, InputFileError, "mean", {}),
}


def _entry(**over) -> dict:
    return {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], **over}


def _header(field: str, key: str, value: str, meta: dict) -> dict | bytes:
    if field == "name":
        return {"__metadata__": meta, value: _entry()} if meta else {value: _entry()}
    if field == "__metadata__":
        return {"__metadata__": {**meta, value: 5}, key: _entry()}
    if field == "duplicate":
        name = json.dumps(value)
        return f"{{{name}: {json.dumps(_entry())}, {name}: {json.dumps(_entry())}}}".encode()
    return {key: _entry(**{field: value})}


#: field -> words the message must hold besides the escaped value.
FIELDS = {
    "name": (),
    "dtype": ("dtype",),
    "shape": ("shape",),
    "data_offsets": ("data_offsets",),
    "__metadata__": ("__metadata__",),
    "duplicate": ("twice",),
}


@pytest.mark.parametrize("hostile", IDS)
@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("reader", READERS)
def test_safetensors_header_fields(tmp_path: Path, reader: str, field: str, hostile: str) -> None:
    read, error, key, meta = READERS[reader]
    path = raw_safetensors(
        tmp_path / "f.safetensors", _header(field, key, HOSTILE[hostile][0], meta), b"\0" * 4
    )
    check(refusal(error, read, path), hostile, *FIELDS[field])


@pytest.mark.parametrize("hostile", ["esc", "cr", "bel", "rlo", "invisible"])
@pytest.mark.parametrize("reader", READERS)
def test_hostile_file_names(tmp_path: Path, reader: str, hostile: str) -> None:
    """The file's own name (a real file, refused for its content; and a missing one)."""
    read, error, _, _ = READERS[reader]
    path = tmp_path / f"{HOSTILE[hostile][0]}.safetensors"
    path.write_bytes(b"\x00" * 3)
    check(refusal(error, read, path), hostile)
    check(refusal(error, read, tmp_path / f"missing{HOSTILE[hostile][0]}"), hostile)


@pytest.mark.parametrize("reader", READERS)
def test_a_10kb_missing_path_is_capped(tmp_path: Path, reader: str) -> None:
    read, error, _, _ = READERS[reader]
    path = tmp_path / ("n" * 10_000)
    message = refusal(error, read, path)
    assert_printable_line(message, names=(f"… ({len(str(path))} characters)",))


@pytest.mark.parametrize("hostile", IDS)
def test_checkpoint_net_config_metadata(tmp_path: Path, hostile: str) -> None:
    """The net config a checkpoint carries: an unknown argument, a bad value."""
    value = HOSTILE[hostile][0]
    for config, words in (
        ({value: 1}, "unknown argument"),
        ({**json.loads(TINY.to_json()), "hidden_size": value}, "hidden_size="),
    ):
        path = raw_safetensors(
            tmp_path / "c.safetensors", {"__metadata__": {CONFIG_METADATA_KEY: json.dumps(config)}, "x": _entry()},
            b"\0" * 4,
        )  # fmt: skip
        check(refusal(CheckpointError, load_checkpoint, path, None), hostile, words)


@pytest.mark.parametrize("hostile", IDS)
def test_rae_stats_torch_file_keys(tmp_path: Path, hostile: str) -> None:
    path = tmp_path / "stat.pt"
    torch.save({HOSTILE[hostile][0]: torch.zeros(2)}, path)
    check(refusal(InputFileError, read_rae_stats, path), hostile, "no 'mean' or 'var' entry")


# ----------------------------------------------------------------- engine manifests
def _store(tmp_path: Path) -> tuple[EngineStore, Path]:
    store = EngineStore(tmp_path / "engines")
    store.put(make_key(), write_plan)
    return store, store.manifest_path_for(make_key())


@pytest.mark.parametrize("hostile", IDS)
@pytest.mark.parametrize(
    ("field", "words"), [("kind", ("kind",)), ("path", ("names",)), ("precision", ("precision",))]
)
def test_engine_manifest_fields(tmp_path: Path, field: str, words: tuple[str, ...], hostile: str) -> None:
    store, manifest_path = _store(tmp_path)
    manifest = json.loads(manifest_path.read_text())
    value = HOSTILE[hostile][0]
    if field == "precision":
        manifest["key"][field] = value
    else:
        manifest[field] = value
    manifest_path.write_text(json.dumps(manifest))
    check(refusal(StoreError, store.lookup, make_key()), hostile, *words)
    (entry,) = store.list()
    row = engine_row(entry)
    for text in row:
        assert_printable_line(text or "-", cap=400)
    if field != "kind":  # the listing shows the kind nowhere but the row's status
        assert any(HOSTILE[hostile][1][:12] in text for text in row), row


@pytest.mark.parametrize("hostile", ["esc", "cr", "bel", "rlo", "invisible"])
def test_engine_manifest_file_names(tmp_path: Path, hostile: str) -> None:
    """A file dropped in the store under a hostile name: listed as a problem, escaped."""
    store, _ = _store(tmp_path)
    (store.root / f"{HOSTILE[hostile][0]}.manifest.json").write_text("{}")
    problems = [e.problem for e in store.list() if e.problem]
    assert len(problems) == 1
    check(problems[0], hostile, "not a pid-trt-manifest/1 manifest")


# ----------------------------------------------------------------- manifests, prompts files
@pytest.mark.parametrize("hostile", ["esc", "cr", "bel", "rlo", "invisible", "long"])
def test_jsonl_manifest_and_prompts_file_paths(tmp_path: Path, hostile: str) -> None:
    value = HOSTILE[hostile][0]
    missing = tmp_path / f"m{value}.jsonl"
    if hostile == "long":  # the path's own length: the folder's name is in it
        for read in (read_manifest, read_prompts_file):
            message = refusal(InputFileError, read, missing)
            assert_printable_line(message, names=(f"… ({len(str(missing))} characters)",))
    else:
        check(refusal(InputFileError, read_manifest, missing), hostile, "manifest", "file not found")
        check(refusal(InputFileError, read_prompts_file, missing), hostile, "prompts file", "file not found")
        empty = tmp_path / f"e{value}.txt"
        empty.write_text("\n\n")
        check(refusal(InputFileError, read_prompts_file, empty), hostile, "no prompts")
        check(refusal(InputFileError, read_manifest, empty), hostile, "no lines")
        bad = tmp_path / f"b{value}.txt"
        bad.write_bytes(b"\xff\xfe\x00")
        check(refusal(InputFileError, read_prompts_file, bad), hostile, "not UTF-8")


# ----------------------------------------------------------------- served requests
@pytest.mark.parametrize("hostile", IDS)
def test_request_parameters_and_ids(hostile: str) -> None:
    value = HOSTILE[hostile][0]
    check(refusal(InputFileError, png_encoding, {"png_encoding": value}), hostile, "png_encoding")
    check(refusal(InputFileError, png_encoding, json.dumps({"png_encoding": value})), hostile, "png_encoding")
    for name in ("tile_overlap", "tile_batch", "allow_untrained_size"):
        check(refusal(InputFileError, TileOptions.from_params, {name: value}), hostile, name)
    label = request_label(value)
    check(label, hostile, "request")
    check(refusal(InputFileError, png_encoding, {"png_encoding": 1}, label), hostile, "png_encoding")
    # A served error's white space runs become one space; anything else unprintable is escaped.
    text = error_text(PidTrtError(f"{value}: raw"))
    assert_printable_line(text, cap=2100)
    if hostile == "long":
        assert text.endswith("… (10005 characters)"), text[-40:]
    else:
        assert HOSTILE[hostile][1].replace("\\r", " ") in text, text


@pytest.mark.parametrize("hostile", IDS)
def test_request_tiling_values_refused_by_the_decode_options(hostile: str) -> None:
    """A string ``tiles`` / ``tile_size`` passes the type check; the decode's option parser
    refuses it, quoting it the same way."""
    from pid_trt.errors import ConfigError
    from pid_trt.tiling.options import parse_tile_size, parse_tiles

    value = HOSTILE[hostile][0]
    check(refusal(ConfigError, parse_tiles, value), hostile, "--tiles")
    check(refusal(ConfigError, parse_tile_size, value), hostile, "--tile-size")


# ----------------------------------------------------------------- environment variables
@pytest.mark.parametrize("hostile", IDS)
def test_environment_variables(hostile: str, monkeypatch) -> None:
    """torchrun's variables and ``$PIDTRT_TEXT_ENCODER``, as a launcher or a shell sets them."""
    from pid_trt.errors import ConfigError
    from pid_trt.jobs.distributed import world_from_env
    from pid_trt.text import TEXT_ENCODER_ENV, resolve_text_encoder_source

    value = HOSTILE[hostile][0]
    check(refusal(ConfigError, world_from_env, {"RANK": "0", "WORLD_SIZE": value}), hostile, "WORLD_SIZE=")
    check(
        refusal(ConfigError, world_from_env, {"RANK": value}), hostile, "RANK=", "is set without WORLD_SIZE"
    )
    if hostile not in ("nul", "long"):  # a path: no NUL; the long one is checked by its length
        monkeypatch.setenv(TEXT_ENCODER_ENV, f"/nonexistent/{value}")
        check(
            refusal(ConfigError, resolve_text_encoder_source, None), hostile, "text encoder", "does not exist"
        )
