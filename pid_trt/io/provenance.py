"""How an output image was made, carried inside the image (docs/guides/provenance.md).

A PNG gets an ``iTXt`` chunk with keyword ``pid-trt``; a JPEG a COM marker ``pid-trt:`` +
the text; a WebP an XMP packet holding the text in attribute ``pidtrt:provenance``. The text
is JSON of :class:`Provenance`: package version, net, checkpoint file name and SHA-256 prefix,
backend, precision, device, steps, seed, degrade sigma, size, tiles, the caption's source and,
for the released weights, their licence notice. :func:`read_provenance` reads it back from any
of the three and refuses a missing or malformed one in one line (never a traceback).

Nothing here imports torch; PIL is imported where an image is read.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pid_trt.errors import InputFileError
from pid_trt.quoting import printable

if TYPE_CHECKING:
    from pid_trt.netspec import NetSpec
    from pid_trt.tiling import SizePlan

#: The PNG text keyword (and JPEG comment prefix, WebP XMP attribute) of the provenance.
KEY = "pid-trt"
#: The licence notice of the released PiD weights (model card, https://huggingface.co/nvidia/PiD).
WEIGHTS_LICENCE = (
    "PiD weights: NVIDIA Source Code License-NC (NSCLv1), non-commercial use only (research or "
    "evaluation); see https://huggingface.co/nvidia/PiD"
)
#: Characters of the checkpoint's SHA-256 recorded.
SHA_PREFIX = 16
_JPEG_PREFIX = KEY.encode() + b":"
_XMP_ATTR = "pidtrt:provenance"
_XMP_RE = re.compile(r'pidtrt:provenance="([^"]*)"')


class ProvenanceAbsent(InputFileError):
    """The image carries no ``pid-trt`` provenance."""


@dataclass(frozen=True)
class Provenance:
    """How one output was made. ``size`` ``WxH`` pixels; ``tiles`` ``none`` (one shot) or
    ``COLSxROWS of WxH``; ``caption`` the caption's source: ``prompt`` (texts in ``prompt``),
    ``file`` (``caption_file``), ``latent`` (the latent file's own), ``null`` (the null
    caption) or ``stand-in`` (seeded random, a random-weight net); ``degrade_sigma`` one per
    image of the batch; ``checkpoint`` None for random weights (``weights`` says
    ``random:<seed>``); ``licence`` the weights' licence notice (None: not released weights);
    ``extra``: what the front end adds (the LDM of ``pidtrt generate``, a server's URL)."""

    version: str
    net: str
    backbone: str | None
    ckpt_type: str | None
    checkpoint: str | None
    checkpoint_sha256: str | None
    weights: str
    backend: str
    precision: str
    device: str
    steps: int
    seed: int
    degrade_sigma: tuple[float, ...]
    size: str
    batch: int
    tiles: str
    caption: str
    prompt: tuple[str, ...] = ()
    caption_file: str | None = None
    licence: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["degrade_sigma"] = [round(float(s), 6) for s in self.degrade_sigma]
        d["prompt"], d["extra"] = list(self.prompt), dict(self.extra)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    def to_text(self) -> dict[str, str]:
        """The text entries to embed: ``{"pid-trt": JSON}``."""
        return {KEY: self.to_json()}


#: Field -> accepted JSON types (None allowed where the dataclass says so).
_TYPES: dict[str, tuple[type, ...]] = {
    "version": (str,), "net": (str,), "backbone": (str, type(None)), "ckpt_type": (str, type(None)),
    "checkpoint": (str, type(None)), "checkpoint_sha256": (str, type(None)), "weights": (str,),
    "backend": (str,), "precision": (str,), "device": (str,), "steps": (int,), "seed": (int,),
    "degrade_sigma": (list,), "size": (str,), "batch": (int,), "tiles": (str,), "caption": (str,),
    "prompt": (list,), "caption_file": (str, type(None)), "licence": (str, type(None)), "extra": (dict,),
}  # fmt: skip
#: Fields every reader may rely on (docs/design.md §3, "Doctor and provenance").
REQUIRED = ("seed", "backend", "precision", "steps", "size")


def parse_provenance(text: str | bytes, where: str = "image") -> dict[str, Any]:
    """The provenance JSON ``text`` as a dict, checked: an object, the :data:`REQUIRED` fields
    present, every known field of its type. InputFileError (one line) otherwise."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputFileError(f"{where}: {KEY} provenance is not JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(data, dict):
        raise InputFileError(f"{where}: {KEY} provenance is {type(data).__name__}, expected a JSON object")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise InputFileError(f"{where}: {KEY} provenance lacks {', '.join(missing)}")
    for name, types in _TYPES.items():
        value = data.get(name)
        if name in data and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise InputFileError(
                f"{where}: {KEY} provenance field {name!r} is {type(value).__name__}, expected {want}"
            )
    return data


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The provenance of a PNG, JPEG or WebP written by pid-trt, as a dict (:func:`parse_provenance`).

    Raises :class:`ProvenanceAbsent` when the image carries none, InputFileError (one line) when
    the file is not a readable image or its provenance is malformed."""
    from PIL import Image, UnidentifiedImageError

    where = f"image {printable(path)}"
    try:
        with Image.open(path) as im:
            fmt, info = im.format, dict(im.info)
            text = getattr(im, "text", {}) if fmt == "PNG" else {}
    except FileNotFoundError:
        raise InputFileError(f"{where}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputFileError(f"{where}: not a readable PNG, JPEG or WebP ({exc})") from None
    raw = _embedded(fmt, info, dict(text))
    if raw is None:
        raise ProvenanceAbsent(f"{where}: no {KEY} provenance ({fmt or 'unknown'} without a {KEY} entry)")
    return parse_provenance(raw, where)


def _embedded(fmt: str | None, info: dict[str, Any], text: dict[str, Any]) -> str | bytes | None:
    if fmt == "PNG":
        return text.get(KEY)
    if fmt == "JPEG":
        comment = info.get("comment")
        if isinstance(comment, bytes) and comment.startswith(_JPEG_PREFIX):
            return comment[len(_JPEG_PREFIX) :]
        return None
    if fmt == "WEBP":
        xmp = info.get("xmp")
        if isinstance(xmp, bytes):
            xmp = xmp.decode("utf-8", errors="replace")
        match = _XMP_RE.search(xmp) if isinstance(xmp, str) else None
        return html.unescape(match.group(1)) if match else None
    return None


def save_options(fmt: str, text: Mapping[str, str] | None) -> dict[str, Any]:
    """Keyword arguments of PIL's ``Image.save`` that embed ``text`` in format ``fmt`` (PNG:
    one iTXt chunk per entry; JPEG: a COM marker; WebP: XMP); {} without text."""
    if not text:
        return {}
    fmt = fmt.upper()
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in text.items():
            info.add_itxt(key, value)
        return {"pnginfo": info}
    value = text.get(KEY)
    if value is None:
        return {}
    if fmt in ("JPEG", "JPG"):
        return {"comment": _JPEG_PREFIX + value.encode("utf-8")}
    if fmt == "WEBP":
        return {"xmp": xmp_packet(value)}
    raise InputFileError(f"provenance: format {fmt!r} is not known, expected PNG, JPEG or WebP")


def xmp_packet(value: str) -> bytes:
    """A minimal XMP packet holding ``value`` in attribute ``pidtrt:provenance``."""
    attr = html.escape(value, quote=True)
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:pidtrt="https://github.com/pid-trt/ns/1.0/" {_XMP_ATTR}="{attr}"/>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def embed_png(data: bytes, text: Mapping[str, str] | None) -> bytes:
    """PNG bytes ``data`` with one iTXt chunk per entry of ``text`` inserted after IHDR (where
    PIL's ``pnginfo`` puts them, so the bytes equal a PIL save with :func:`save_options`)."""
    if not text:
        return data
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise InputFileError("provenance: not PNG bytes (no IHDR after the signature)")
    end = 8 + 12 + struct.unpack(">I", data[8:12])[0]
    chunks = b""
    for key, value in text.items():
        body = key.encode("latin-1") + b"\0\0\0" + b"\0" + b"\0" + value.encode("utf-8")
        chunks += (
            struct.pack(">I", len(body)) + b"iTXt" + body + struct.pack(">I", zlib.crc32(b"iTXt" + body))
        )
    return data[:end] + chunks + data[end:]


def weights_licence(spec: NetSpec) -> str | None:
    """The licence notice of a net's weights (a :class:`pid_trt.netspec.NetSpec`): the released
    weights' (:data:`WEIGHTS_LICENCE`) for a released preset with a checkpoint; None for random
    weights and custom nets (their weights are not NVIDIA's release, or not known to be)."""
    preset = spec.preset
    return WEIGHTS_LICENCE if preset is not None and preset.released and not spec.random_weights else None


def package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pid-trt")
    except metadata.PackageNotFoundError:
        return "unknown"


def for_decode(
    spec: NetSpec, backend: str, precision: str, device: str, *, seed: int, steps: int, height: int, width: int,
    degrade_sigma: Sequence[float], tiles: str = "none", caption: str = "latent", prompt: Sequence[str] = (),
    caption_file: str | os.PathLike[str] | None = None, extra: Mapping[str, Any] | None = None,
) -> Provenance:  # fmt: skip
    """The provenance of one decode by a net of ``spec`` (a :class:`pid_trt.netspec.NetSpec`):
    the checkpoint's SHA-256 comes from :func:`pid_trt.checkpoints.file_sha256` (hashed once
    per process, shared with the engine and export keys)."""
    preset = spec.preset
    checkpoint = sha = None
    if not spec.random_weights and spec.checkpoint is not None:
        from pid_trt.checkpoints import file_sha256

        checkpoint, sha = Path(spec.checkpoint).name, file_sha256(spec.checkpoint)[:SHA_PREFIX]
    sigmas = tuple(float(s) for s in degrade_sigma)
    return Provenance(
        version=package_version(), net=spec.name,
        backbone=preset.backbone.value if preset is not None else None,
        ckpt_type=preset.ckpt_type.value if preset is not None and preset.released else None,
        checkpoint=checkpoint, checkpoint_sha256=sha,
        weights="checkpoint" if checkpoint else f"random:{spec.weights_seed}",
        backend=str(backend), precision=str(precision), device=str(device), steps=int(steps), seed=int(seed),
        degrade_sigma=sigmas, size=f"{width}x{height}", batch=len(sigmas), tiles=tiles, caption=caption,
        prompt=tuple(prompt), caption_file=None if caption_file is None else Path(caption_file).name,
        licence=weights_licence(spec), extra=dict(extra or {}),
    )  # fmt: skip


def caption_kind(source: str, from_file: bool) -> str:
    """The provenance's ``caption`` for a :class:`pid_trt.caption_choice.Caption` ``source``
    (``prompt``, ``file``, ``null (...)``, ``random stand-in``): ``file`` is ``latent`` unless
    the caption came from a caption file of its own (``from_file``)."""
    if source.startswith("null"):
        return "null"
    if source == "file":
        return "file" if from_file else "latent"
    return "stand-in" if source == "random stand-in" else source


def tiles_text(size_plan: SizePlan) -> str:
    """``none`` for a one-shot :class:`pid_trt.tiling.SizePlan`, else ``COLSxROWS of WxH``."""
    g = size_plan.grid
    return "none" if g is None else f"{g.cols}x{g.rows} of {g.tile_width}x{g.tile_height}"
