"""Image encoders: quantized pixels [H, W, 3] (uint8, or uint16 for 16-bit PNG) to file bytes.

The format comes from the output's suffix (:func:`output_format`); how it is encoded from
:class:`OutputOptions`, one frozen value that travels from the command line to the writer.
Every encoder takes optional text metadata (``text``: key -> value), stored as PNG
``tEXt``/``iTXt`` chunks, a JPEG ``COM`` segment (``key=value`` lines) or WebP XMP.

PNG is written by :func:`png_bytes` (our own chunk writer, rows "up"-filtered with numpy,
deflated by :func:`deflate`), chosen by measurement over PIL's encoder at every level, zlib's
strategies and ISA-L (see docs/guides/outputs-and-host-pipeline.md): at the default level
(ISA-L) ~40x faster than PIL at level 6 on photographs for 1.13x its bytes; at level 2 (zlib
run-length matches) ~12x faster for 0.97x the bytes; the pixels are the same at every level.
JPEG and WebP go through Pillow (its JPEG is libjpeg-turbo). ISA-L, zlib and Pillow release
the GIL while they compress, so a pool of threads encodes in parallel.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from pid_trt.errors import ConfigError
from pid_trt.quoting import printable, quote

#: PNG level by default (:func:`deflate`: 0 stored, 1 fastest ... 9 smallest); ``--png-level``.
DEFAULT_PNG_LEVEL = 1
#: ISA-L's compression level (0..3) of PNG level 1.
ISAL_LEVEL = 2
#: JPEG / lossy WebP quality by default.
DEFAULT_QUALITY = 95
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IDAT_CHUNK = 1 << 20  # bytes of compressed data per IDAT chunk


class OutputFormat(str, Enum):
    """What an output file holds."""

    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"
    SAFETENSORS = "safetensors"


#: Output suffix (lower case) -> format.
SUFFIX_FORMATS = {
    ".png": OutputFormat.PNG,
    ".jpg": OutputFormat.JPEG,
    ".jpeg": OutputFormat.JPEG,
    ".webp": OutputFormat.WEBP,
    ".safetensors": OutputFormat.SAFETENSORS,
}


def output_format(path: str | Path) -> OutputFormat:
    """The format of an output path, by its suffix. Raises ConfigError for another suffix."""
    suffix = Path(path).suffix
    fmt = SUFFIX_FORMATS.get(suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"output {printable(path)}: unsupported suffix {quote(suffix) if suffix else '(none)'}, expected one of {', '.join(SUFFIX_FORMATS)}"
        )
    return fmt


@dataclass(frozen=True)
class OutputOptions:
    """How images are encoded (the format itself comes from each output's suffix).

    png_level: PNG compression (:func:`deflate`), 0 stored, 1 fastest .. 9 smallest; quality: JPEG and
    lossy WebP quality 1..100; bit_depth: 8, or 16 for 16-bit PNG (PNG only); webp_lossless:
    WebP written lossless (``quality`` then unused).
    """

    png_level: int = DEFAULT_PNG_LEVEL
    quality: int = DEFAULT_QUALITY
    bit_depth: int = 8
    webp_lossless: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.png_level <= 9:
            raise ConfigError(f"--png-level {self.png_level}: expected 0 (fastest) .. 9 (smallest)")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"--quality {self.quality}: expected 1 .. 100")
        if self.bit_depth not in (8, 16):
            raise ConfigError(f"--bit-depth {self.bit_depth}: expected 8 or 16")

    def check(self, fmt: OutputFormat) -> None:
        """Refuse options the format cannot honour (16 bits outside PNG)."""
        if self.bit_depth == 16 and fmt not in (OutputFormat.PNG, OutputFormat.SAFETENSORS):
            raise ConfigError(f"--bit-depth 16 is for .png outputs, not .{fmt.value}: use .png or 8 bits")

    def pixel_bits(self, fmt: OutputFormat) -> int:
        """Bits per channel of the quantized pixels ``fmt`` is encoded from (8 or 16)."""
        return 16 if fmt is OutputFormat.PNG and self.bit_depth == 16 else 8


def encode_image(
    pixels: np.ndarray, fmt: OutputFormat, options: OutputOptions, text: Mapping[str, str] | None = None
) -> bytes:
    """``pixels`` [H, W, 3] (uint8; uint16 for a 16-bit PNG) as the bytes of a ``fmt`` file."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"pixels of shape {list(pixels.shape)} {pixels.dtype}: expected [H, W, 3] uint8/uint16"
        )
    if fmt is OutputFormat.PNG:
        return png_bytes(pixels, level=options.png_level, text=text)
    if pixels.dtype != np.uint8:
        raise ValueError(f"{fmt.value} takes uint8 pixels, not {pixels.dtype}")
    if fmt is OutputFormat.JPEG:
        return jpeg_bytes(pixels, quality=options.quality, text=text)
    if fmt is OutputFormat.WEBP:
        return webp_bytes(pixels, quality=options.quality, lossless=options.webp_lossless, text=text)
    raise ValueError(f"{fmt.value} is not an image format")


# ---------------------------------------------------------------------------------- PNG
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _text_chunks(text: Mapping[str, str] | None) -> list[bytes]:
    """tEXt for Latin-1 text, iTXt (UTF-8, uncompressed) otherwise; keywords 1..79 Latin-1."""
    chunks = []
    for key, value in (text or {}).items():
        k = key.encode("latin-1")
        if not 1 <= len(k) <= 79 or b"\0" in k:
            raise ValueError(f"PNG text keyword {key!r}: expected 1..79 Latin-1 characters")
        try:
            chunks.append(_chunk(b"tEXt", k + b"\0" + value.encode("latin-1")))
        except UnicodeEncodeError:
            chunks.append(_chunk(b"iTXt", k + b"\0\0\0\0\0" + value.encode("utf-8")))
    return chunks


def filter_rows(pixels: np.ndarray, png_filter: str = "up") -> np.ndarray:
    """The filtered scanlines of ``pixels`` [H, W, C] (uint8 or uint16, stored big-endian):
    [H, 1 + W * C * bytes] uint8, each row led by its filter type (PNG spec §9)."""
    h = pixels.shape[0]
    raw = pixels.astype(">u2", copy=False) if pixels.dtype == np.uint16 else pixels
    rows = np.ascontiguousarray(raw).view(np.uint8).reshape(h, -1)
    bpp = pixels.shape[2] * pixels.dtype.itemsize
    out = np.empty((h, rows.shape[1] + 1), np.uint8)
    body = out[:, 1:]
    if png_filter == "none":
        out[:, 0], body[:] = 0, rows
    elif png_filter == "sub":
        out[:, 0] = 1
        body[:, :bpp] = rows[:, :bpp]
        np.subtract(rows[:, bpp:], rows[:, :-bpp], out=body[:, bpp:])
    elif png_filter == "up":
        out[:, 0] = 2
        body[0] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=body[1:])
    elif png_filter == "paeth":
        out[:, 0] = 4
        body[:] = rows - _paeth_predictor(rows, bpp)
    else:
        raise ValueError(f"PNG filter {png_filter!r}: expected none, sub, up or paeth")
    return out


def _paeth_predictor(rows: np.ndarray, bpp: int) -> np.ndarray:
    a = np.zeros(rows.shape, np.int16)  # left
    a[:, bpp:] = rows[:, :-bpp]
    b = np.zeros(rows.shape, np.int16)  # up
    b[1:] = rows[:-1]
    c = np.zeros(rows.shape, np.int16)  # up-left
    c[1:, bpp:] = rows[:-1, :-bpp]
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    return pred.astype(np.uint8)


def png_bytes(
    pixels: np.ndarray,
    *,
    level: int = DEFAULT_PNG_LEVEL,
    text: Mapping[str, str] | None = None,
    png_filter: str = "up",
    deflater: Callable[[np.ndarray], bytes] | None = None,
) -> bytes:
    """A PNG of ``pixels`` [H, W, 3] (uint8 -> 8-bit RGB, uint16 -> 16-bit RGB), rows filtered
    with ``png_filter`` ("up"), deflated as :func:`deflate` does at ``level``. ``deflater``:
    filtered rows -> a zlib stream, instead of :func:`deflate` (for measurements)."""
    h, w, _ = pixels.shape
    depth = 16 if pixels.dtype == np.uint16 else 8
    header = struct.pack(">IIBBBBB", w, h, depth, 2, 0, 0, 0)  # colour type 2: RGB
    rows = filter_rows(pixels, png_filter)
    data = deflate(rows, level) if deflater is None else deflater(rows)
    parts = [_PNG_SIGNATURE, _chunk(b"IHDR", header), *_text_chunks(text)]
    parts += [_chunk(b"IDAT", data[i : i + _IDAT_CHUNK]) for i in range(0, len(data), _IDAT_CHUNK)]
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def png_deflater(level: int = DEFAULT_PNG_LEVEL) -> str:
    """Which deflater :func:`deflate` runs at ``level``: ``"isal"`` (level 1 with python-isal
    importable), ``"zlib-rle"`` (level 2, or level 1 without isal), ``"zlib"`` (0, 3..9)."""
    if level == 1:
        try:
            from isal import isal_zlib  # noqa: F401  (a dependency where it has wheels)
        except ImportError:
            return "zlib-rle"
        return "isal"
    return "zlib-rle" if level == 2 else "zlib"


def deflate(data, level: int = DEFAULT_PNG_LEVEL) -> bytes:
    """A zlib stream of ``data`` (bytes-like) at a PNG level (``--png-level``): 0 stored;
    1 (default) ISA-L's deflate at its level :data:`ISAL_LEVEL` (python-isal: ~3x zlib's
    fastest on photographs, 1.17x the bytes of level 2), or level 2's when isal is not
    importable; 2 zlib's run-length matches (``Z_RLE``: as small as Pillow's level 6 at ~1/12
    of its time); 3..9 zlib's full match search at that level (smaller on flat, graphic
    images; slower). Each releases the GIL while it compresses."""
    kind = png_deflater(level)
    if kind == "isal":
        from isal import isal_zlib

        return isal_zlib.compress(data, ISAL_LEVEL)
    if kind == "zlib-rle":
        compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    else:
        compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY)
    return compressor.compress(data) + compressor.flush()


def read_png(data: bytes) -> tuple[np.ndarray, dict[str, str]]:
    """An 8-bit RGB PNG file's pixels [H, W, 3] uint8 and its text entries (``tEXt`` /
    ``iTXt``), e.g. a served image to be written in another format or at another level."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.format != "PNG" or im.mode != "RGB":
            raise ValueError(f"a {im.format} image of mode {im.mode}: expected an 8-bit RGB PNG")
        text = {str(k): str(v) for k, v in getattr(im, "text", {}).items()}
        return np.asarray(im), text


# ---------------------------------------------------------------------------------- JPEG / WebP
def jpeg_bytes(
    pixels: np.ndarray, *, quality: int = DEFAULT_QUALITY, text: Mapping[str, str] | None = None
) -> bytes:
    """A baseline JPEG of ``pixels`` [H, W, 3] uint8 (Pillow: libjpeg-turbo), 4:2:0 below
    quality 90, 4:4:4 from 90; ``text`` as one COM segment of ``key=value`` lines."""
    from PIL import Image

    buf = io.BytesIO()
    extra = {"comment": "\n".join(f"{k}={v}" for k, v in text.items()).encode("utf-8")} if text else {}
    subsampling = 0 if quality >= 90 else 2
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, subsampling=subsampling, **extra)
    return buf.getvalue()


def jpeg_engine(pixels) -> str:
    """The JPEG encoder that takes ``pixels``: ``"nvjpeg"`` (``torchvision.io.encode_jpeg`` on
    the GPU, the host paying only for the compressed bytes) for a CUDA tensor when torchvision
    is importable; ``"pillow"`` (libjpeg-turbo on the CPU) for anything else."""
    return jpeg_engine_on("cuda" if getattr(pixels, "is_cuda", False) else "cpu")


def jpeg_engine_on(device) -> str:
    """The JPEG encoder :func:`jpeg_engine` picks for pixels on ``device`` ("cuda:0", a
    ``torch.device``, "cpu" ...): ``"nvjpeg"`` on a CUDA device when torchvision is importable,
    else ``"pillow"``. A decode asks this before it runs, to leave its pixels where nvJPEG
    reads them (:func:`pid_trt.io.images.pooled_output`)."""
    if not str(device).startswith("cuda"):
        return "pillow"
    try:
        import torchvision.io  # noqa: F401  (optional: never a dependency of an extra)
    except ImportError:
        return "pillow"
    return "nvjpeg"


def jpeg_from_tensor(
    pixels, *, quality: int = DEFAULT_QUALITY, text: Mapping[str, str] | None = None
) -> bytes:
    """A JPEG of ``pixels`` [3, H, W] uint8 (a torch tensor on any device), by the encoder
    :func:`jpeg_engine` picks: nvJPEG on the GPU for a CUDA tensor (4:4:4, as torchvision
    encodes; ``text`` as a COM segment), else :func:`jpeg_bytes` on the CPU. The CUDA pixels
    must be ready (the caller synchronizes with the stream that made them)."""
    if jpeg_engine(pixels) == "nvjpeg":
        import torch
        from torchvision.io import encode_jpeg

        with torch.cuda.device(pixels.device):
            data = bytes(encode_jpeg(pixels.contiguous(), quality=quality).cpu().numpy())
        return _with_comment(data, text) if text else data
    return jpeg_bytes(pixels.permute(1, 2, 0).cpu().numpy(), quality=quality, text=text)


def _with_comment(jpeg: bytes, text: Mapping[str, str]) -> bytes:
    """``jpeg`` with a COM segment of ``key=value`` lines right after its SOI marker."""
    body = "\n".join(f"{k}={v}" for k, v in text.items()).encode("utf-8")[: 0xFFFF - 2]
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def webp_bytes(
    pixels: np.ndarray,
    *,
    quality: int = DEFAULT_QUALITY,
    lossless: bool = False,
    text: Mapping[str, str] | None = None,
) -> bytes:
    """A WebP of ``pixels`` [H, W, 3] uint8: lossy at ``quality`` or lossless (fastest method);
    ``text`` as XMP attributes in the ``pidtrt`` namespace."""
    from PIL import Image

    buf = io.BytesIO()
    extra = {"xmp": _xmp(text)} if text else {}
    if lossless:
        Image.fromarray(pixels).save(buf, format="WEBP", lossless=True, quality=0, method=0, **extra)
    else:
        Image.fromarray(pixels).save(buf, format="WEBP", quality=quality, method=0, **extra)
    return buf.getvalue()


def _xmp(text: Mapping[str, str]) -> bytes:
    attrs = " ".join(
        f"pidtrt:{k}={quoteattr(v)}" for k, v in text.items() if k.replace("-", "_").isidentifier()
    )
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description xmlns:pidtrt="urn:pid-trt:meta:1" {attrs}/></rdf:RDF></x:xmpmeta>'
    ).encode()
