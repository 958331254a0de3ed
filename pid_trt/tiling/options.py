"""The tiling choice of one decode: ``--tiles auto|off|COLSxROWS``, ``--tile-size WxH``,
``--tile-overlap PX``, ``--tile-batch N``, ``--allow-untrained-size`` (the same keywords on
:meth:`pid_trt.Decoder.decode`), parsed and checked on their own; the checks that need the
image and the net (latent grid, tile vs image) are :func:`pid_trt.tiling.grid.make_grid`'s.

- ``auto`` (default): one shot inside the checkpoint type's trained envelope, tiles outside
  it, and tiles where a one-shot decode would not fit the device's memory.
- ``off``: always one shot; a size outside the envelope is refused unless
  ``allow_untrained_size``.
- ``COLSxROWS``: that grid of tiles, whatever the size. Without a tile size the tiles split
  the image evenly with the given overlap; with one, they are spread evenly over the image
  (a grid that leaves a gap is refused).

One :class:`TileOptions` is made at each door and passed on as it is: from the CLI's or
:meth:`pid_trt.Decoder.decode`'s keywords (:meth:`TileOptions.create`), or from the parameters
of a request to ``pidtrt serve`` (:meth:`TileOptions.from_params`, the one reading of the wire
format :data:`REQUEST_PARAMS`; :meth:`TileOptions.to_params` writes it).

``--devices cpu,cuda:0,...`` spreads the tile batches of one decode over one backend per
device (round-robin, concurrently); the predictions are blended on the decode's device. It
needs tiles: with ``--tiles off`` it is refused; a decode that ``auto`` runs in one shot runs
on the decode's own device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pid_trt.backends.registry import check_device
from pid_trt.errors import ConfigError, InputFileError
from pid_trt.quoting import quote

#: The tiling options a request to ``pidtrt serve`` may carry, as request parameters (the
#: keywords of :meth:`TileOptions.create` but ``devices``: a server places its own devices),
#: and the JSON types each takes.
REQUEST_PARAMS: dict[str, tuple[type, ...]] = {
    "tiles": (str,),
    "tile_size": (str,),
    "tile_overlap": (int,),
    "tile_batch": (int,),
    "allow_untrained_size": (bool,),
}
_JSON_KINDS = {str: "a string", int: "an integer", bool: "true or false"}

#: The defaults of :meth:`TileOptions.create`'s keywords.
KEYWORD_DEFAULTS: dict[str, Any] = {
    "tiles": "auto",
    "tile_size": None,
    "tile_overlap": None,
    "tile_batch": 1,
    "allow_untrained_size": False,
    "devices": None,
}


class TileMode(str, Enum):
    """How a decode chooses between one shot and tiles."""

    AUTO = "auto"
    OFF = "off"
    GRID = "grid"


#: What :meth:`TileOptions.create` takes (checked at run time all the same): ``tiles`` "auto",
#: "off", "COLSxROWS", a :class:`TileMode` or (cols, rows); ``tile_size`` "WxH", N (square) or
#: (height, width) pixels; ``devices`` "cpu,cuda:0" or a sequence of names (None: none).
TilesValue = str | TileMode | tuple[int, int]
TileSizeValue = str | int | tuple[int, int]
DevicesValue = str | Sequence[str] | None


def _positive_int(value: object, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what} {quote(value)}: expected an integer >= {minimum}")
    return value


def _pair(text: str, what: str, example: str) -> tuple[int, int]:
    parts = str(text).strip().lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"{what} {quote(text)}: expected {example}")
    a, b = (int(p) for p in parts)
    if a <= 0 or b <= 0:
        raise ConfigError(f"{what} {quote(text)}: expected {example} with both numbers positive")
    return a, b


def parse_tiles(value: TilesValue) -> tuple[TileMode, tuple[int, int] | None]:
    """``auto`` | ``off`` | ``COLSxROWS`` (or a :class:`TileMode`, or (cols, rows)) ->
    (mode, (cols, rows) or None)."""
    if isinstance(value, TileMode):
        if value is TileMode.GRID:
            raise ConfigError("--tiles grid: expected auto, off or COLSxROWS (e.g. 3x2)")
        return value, None
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ConfigError(f"tiles {quote(value)}: expected (cols, rows)")
        cols, rows = (_positive_int(v, "--tiles count") for v in value)
        return TileMode.GRID, (cols, rows)
    text = str(value).strip().lower()
    if text in (TileMode.AUTO.value, TileMode.OFF.value):
        return TileMode(text), None
    cols, rows = _pair(str(value).strip(), "--tiles", "auto, off or COLSxROWS (e.g. 3x2)")
    return TileMode.GRID, (cols, rows)


def parse_devices(value: DevicesValue) -> tuple[str, ...]:
    """``cpu,cuda:0,cuda:1`` (or a sequence of names, or None / "") -> the device names,
    each ``cpu`` | ``cuda`` | ``cuda:N`` (lower-cased); a repeated name is kept (one backend each)."""
    if value is None:
        return ()
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    if isinstance(value, str) and not value.strip():
        return ()
    if not parts or any(not isinstance(p, str) or not p for p in parts):
        raise ConfigError(
            f"--devices {quote(value)}: expected device names separated by commas, e.g. cuda:0,cuda:1"
        )
    return tuple(check_device(p, "--devices") for p in parts)


def parse_tile_size(value: TileSizeValue) -> tuple[int, int]:
    """``WxH`` (pixels), N (square) or (height, width) -> (height, width)."""
    if isinstance(value, int) and not isinstance(value, bool):
        _positive_int(value, "--tile-size")
        return value, value
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ConfigError(f"tile_size {quote(value)}: expected (height, width) or 'WxH'")
        height, width = (_positive_int(v, "--tile-size side") for v in value)
        return height, width
    width, height = _pair(str(value), "--tile-size", "WIDTHxHEIGHT in pixels, e.g. 2048x2048")
    return height, width


@dataclass(frozen=True)
class TileOptions:
    """A decode's tiling choice, parsed (see the module docstring).

    grid: (cols, rows) for :attr:`TileMode.GRID`; tile_size: (height, width) pixels or None
    (auto: a trained size; grid: split evenly); overlap: minimum overlap of neighbouring tiles
    in pixels, None for the default (:func:`pid_trt.tiling.grid.default_overlap`); batch:
    tiles per backend call; allow_untrained_size: one shot outside the envelope (auto and off);
    devices: the devices the tile batches are dealt over, one backend each (empty: the
    decode's own device).
    """

    mode: TileMode = TileMode.AUTO
    grid: tuple[int, int] | None = None
    tile_size: tuple[int, int] | None = None
    overlap: int | None = None
    batch: int = 1
    allow_untrained_size: bool = False
    devices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.mode is TileMode.GRID) != (self.grid is not None):
            raise ConfigError(
                f"tiles {self.mode.value} with grid {self.grid!r}: a grid goes with COLSxROWS only"
            )
        _positive_int(self.batch, "--tile-batch")
        if self.overlap is not None:
            _positive_int(self.overlap, "--tile-overlap", minimum=0)
        if self.mode is TileMode.OFF:
            given = [
                name
                for name, v in (("--tile-size", self.tile_size), ("--tile-overlap", self.overlap))
                if v is not None
            ]
            if self.devices:
                given.append("--devices")
            if given:
                raise ConfigError(
                    f"{' and '.join(given)} with --tiles off: expected --tiles auto or COLSxROWS"
                )

    @classmethod
    def create(
        cls,
        tiles: TilesValue = "auto",
        tile_size: TileSizeValue | None = None,
        tile_overlap: int | None = None,
        tile_batch: int = 1,
        allow_untrained_size: bool = False,
        devices: DevicesValue = None,
    ) -> TileOptions:
        """From the CLI's / :meth:`pid_trt.Decoder.decode`'s keywords (strings or values)."""
        mode, grid = parse_tiles(tiles)
        size = None if tile_size is None else parse_tile_size(tile_size)
        if not isinstance(allow_untrained_size, bool):
            raise ConfigError(f"allow_untrained_size={allow_untrained_size!r}: expected True or False")
        return cls(mode, grid, size, tile_overlap, tile_batch, allow_untrained_size, parse_devices(devices))

    def keywords(self) -> dict[str, Any]:
        """The options as :meth:`create`'s keywords: ``create(**o.keywords()) == o``."""
        return {
            "tiles": self.grid if self.grid is not None else self.mode,
            "tile_size": self.tile_size,
            "tile_overlap": self.overlap,
            "tile_batch": self.batch,
            "allow_untrained_size": self.allow_untrained_size,
            "devices": self.devices or None,
        }

    def to_params(self) -> dict[str, Any]:
        """The options as the parameters of a request to ``pidtrt serve`` (:data:`REQUEST_PARAMS`,
        JSON values); a tile size or overlap left at None is not sent (the server's applies).
        ConfigError when devices are set: a request cannot choose them."""
        if self.devices:
            raise ConfigError(
                f"tiling devices {','.join(self.devices)}: a request cannot choose devices, the server "
                "places its own (pidtrt serve --gpus)"
            )
        return {name: value for name, value in self.record().items() if value is not None}

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any] | None, defaults: TileOptions | None = None, what: str = "request"
    ) -> TileOptions:
        """A request's tiling: the parameters of :data:`REQUEST_PARAMS` that ``params`` carries
        (other names, e.g. ``png_encoding``, are not read) over ``defaults`` (the server's options;
        None: :class:`TileOptions` ()). One-line errors starting with ``what``: InputFileError for
        a value of the wrong JSON type, ConfigError for a bad value (as :meth:`create`)."""
        given = {}
        for name, types in REQUEST_PARAMS.items():
            if params is None or name not in params:
                continue
            value = params[name]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise InputFileError(
                    f"{what}: parameter {name} {quote(value)}: expected {_JSON_KINDS[types[0]]}"
                )
            given[name] = value
        try:
            return cls.create(**{**(defaults or cls()).keywords(), **given})
        except ConfigError as exc:
            raise ConfigError(f"{what}: {exc}") from None

    def record(self) -> dict[str, Any]:
        """The options as the CLI's keywords with text values (a run manifest's ``tiling``):
        ``tiles`` "auto" | "off" | "COLSxROWS", ``tile_size`` "WxH" or None, ``tile_overlap``,
        ``tile_batch``, ``allow_untrained_size``, and ``devices`` "cpu,cuda:0" when set."""
        out: dict[str, Any] = {
            "tiles": f"{self.grid[0]}x{self.grid[1]}" if self.grid else self.mode.value,
            "tile_size": None if self.tile_size is None else f"{self.tile_size[1]}x{self.tile_size[0]}",
            "tile_overlap": self.overlap,
            "tile_batch": self.batch,
            "allow_untrained_size": self.allow_untrained_size,
        }
        if self.devices:
            out["devices"] = ",".join(self.devices)
        return out

    def describe(self) -> str:
        """The options as CLI flags, e.g. ``--tiles 3x2 --tile-overlap 256 --tile-batch 2``."""
        tiles = f"{self.grid[0]}x{self.grid[1]}" if self.grid else self.mode.value
        out = [f"--tiles {tiles}"]
        if self.tile_size is not None:
            out.append(f"--tile-size {self.tile_size[1]}x{self.tile_size[0]}")
        if self.overlap is not None:
            out.append(f"--tile-overlap {self.overlap}")
        out.append(f"--tile-batch {self.batch}")
        if self.allow_untrained_size:
            out.append("--allow-untrained-size")
        if self.devices:
            out.append(f"--devices {','.join(self.devices)}")
        return " ".join(out)


def tile_options(tiling: TileOptions | None = None, **keywords: Any) -> TileOptions:
    """The tiling of a call that takes a :class:`TileOptions` or the keyword shim of
    :meth:`TileOptions.create` (:meth:`pid_trt.Decoder.decode` / ``plan``): ``tiling`` when given,
    else the keywords'. A keyword off its default beside ``tiling`` is refused in one line."""
    if tiling is None:
        return TileOptions.create(**keywords)
    if not isinstance(tiling, TileOptions):
        raise ConfigError(f"tiling={tiling!r}: expected a pid_trt.tiling.TileOptions or None")
    given = [name for name, value in keywords.items() if value != KEYWORD_DEFAULTS[name]]
    if given:
        raise ConfigError(
            f"tiling= with {', '.join(given)}: give a TileOptions or the tiling keywords, not both"
        )
    return tiling
