"""TileOptions as the value passed: the keywords it is made of, and the parameters a request to
``pidtrt serve`` carries (``to_params`` writes them, ``from_params`` is their one reading:
names, JSON types and values, over the server's options)."""

from __future__ import annotations

import pytest

from pid_trt.errors import ConfigError, InputFileError
from pid_trt.tiling import TileMode, TileOptions
from pid_trt.tiling.options import REQUEST_PARAMS, tile_options

#: Options as the CLI / Decoder keywords give them, and the request parameters written by hand.
CASES = (
    ({}, {"tiles": "auto", "tile_batch": 1, "allow_untrained_size": False}),
    (
        {"tiles": "3x2", "tile_overlap": 64, "tile_batch": 2},
        {"tiles": "3x2", "tile_overlap": 64, "tile_batch": 2, "allow_untrained_size": False},
    ),
    (
        {"tile_size": "96x64", "allow_untrained_size": True},
        {"tiles": "auto", "tile_size": "96x64", "tile_batch": 1, "allow_untrained_size": True},
    ),
    ({"tiles": "off"}, {"tiles": "off", "tile_batch": 1, "allow_untrained_size": False}),
)


@pytest.mark.parametrize(("keywords", "params"), CASES)
def test_request_parameters_round_trip(keywords: dict, params: dict) -> None:
    options = TileOptions.create(**keywords)
    assert options.to_params() == params
    assert set(params) <= set(REQUEST_PARAMS)
    assert TileOptions.from_params(params) == options
    assert TileOptions.create(**options.keywords()) == options


def test_keywords_round_trip_devices() -> None:
    options = TileOptions.create(tiles="2x2", tile_size=(64, 96), devices="cpu,cpu")
    assert options.devices == ("cpu", "cpu") and options.tile_size == (64, 96)
    assert TileOptions.create(**options.keywords()) == options
    with pytest.raises(ConfigError, match=r"^tiling devices cpu,cpu: a request cannot choose devices"):
        options.to_params()


def test_a_request_overrides_the_servers_options_name_by_name() -> None:
    server = TileOptions.create(tiles="off", tile_batch=2)
    got = TileOptions.from_params({"tiles": "2x2", "png_encoding": "binary", "devices": "cuda:0"}, server)
    assert got == TileOptions(TileMode.GRID, grid=(2, 2), batch=2)
    assert TileOptions.from_params({}, server) == server
    assert TileOptions.from_params(None) == TileOptions()


@pytest.mark.parametrize(
    ("params", "kind", "words"),
    [
        ({"tile_batch": "2"}, InputFileError, "request r: parameter tile_batch '2': expected an integer"),
        (
            {"tile_overlap": True},
            InputFileError,
            "request r: parameter tile_overlap True: expected an integer",
        ),
        ({"tiles": 3}, InputFileError, "request r: parameter tiles 3: expected a string"),
        ({"tile_size": 96}, InputFileError, "request r: parameter tile_size 96: expected a string"),
        (
            {"allow_untrained_size": "yes"},
            InputFileError,
            "request r: parameter allow_untrained_size 'yes': expected true or false",
        ),
        ({"tile_batch": 0}, ConfigError, "request r: --tile-batch 0: expected an integer >= 1"),
        (
            {"tile_size": "96"},
            ConfigError,
            "request r: --tile-size '96': expected WIDTHxHEIGHT in pixels, e.g. 2048x2048",
        ),
    ],
)
def test_a_bad_request_parameter_is_one_line_naming_the_request(params: dict, kind: type, words: str) -> None:
    with pytest.raises(kind) as err:
        TileOptions.from_params(params, what="request r")
    assert type(err.value) is kind and str(err.value) == words


def test_tiling_or_the_keywords_not_both() -> None:
    options = TileOptions.create(tiles="2x2")
    assert tile_options(options, tiles="auto", tile_batch=1) is options  # keywords at their defaults
    assert tile_options(None, tiles="2x2") == options
    with pytest.raises(ConfigError) as err:
        tile_options(options, tiles="3x2", tile_batch=2)
    assert (
        str(err.value)
        == "tiling= with tiles, tile_batch: give a TileOptions or the tiling keywords, not both"
    )
    with pytest.raises(
        ConfigError, match=r"^tiling=\{'tiles': '2x2'\}: expected a pid_trt.tiling.TileOptions"
    ):
        tile_options({"tiles": "2x2"})  # type: ignore[arg-type]
