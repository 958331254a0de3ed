"""Output encoders: PNG (8/16 bits) lossless by the quantization rule, JPEG/WebP quality,
text metadata, OutputOptions checks; decoded back with independent readers (Pillow, libspng)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pid_trt.bench.photo import photo_like
from pid_trt.errors import ConfigError, InputFileError
from pid_trt.io import OutputOptions, quantize, to_uint8, write_images
from pid_trt.io.encoders import OutputFormat, encode_image, png_bytes


def _photo(h: int = 192, w: int = 256) -> torch.Tensor:
    img = photo_like(h, w, seed=3)
    img[0, :, 0, :8] = torch.tensor([-1.0, 1.0, 0.0, -1.5, 1.5, 1e-9, -0.99999994, 0.99999994]).view(1, 8)
    return img


def _rule(img: torch.Tensor, top: int) -> np.ndarray:
    """DESIGN.md §3 written out in numpy float64: floor((clamp(x, -1, 1) + 1) * top / 2), [H, W, 3]."""
    x = np.clip(img[0].double().numpy(), -1.0, 1.0)
    return np.floor((x + 1.0) * (top / 2)).astype(np.int64).transpose(1, 2, 0)


@pytest.mark.parametrize("level", [0, 1, 2, 3, 6, 9])
def test_png_pixels_are_the_rule_exactly_at_every_level(tmp_path, level):
    img = _photo()
    (path,) = write_images(img, tmp_path / "o.png", OutputOptions(png_level=level))
    with Image.open(path) as im:
        assert im.mode == "RGB"
        got = np.asarray(im)
    assert np.array_equal(got, _rule(img, 255))
    assert np.array_equal(got, to_uint8(img)[0].numpy())


def test_png_levels_pick_their_deflater(monkeypatch):
    """Level 1 (default): ISA-L where python-isal imports (zlib's run-length deflate without it);
    level 2: zlib Z_RLE; 0 and 3..9: zlib at that level. Each stream inflates to the filtered
    rows, and the level-1 file is ISA-L's own stream for them."""
    import sys
    import zlib

    from pid_trt.io.encoders import ISAL_LEVEL, deflate, filter_rows, png_deflater

    isal_zlib = pytest.importorskip("isal.isal_zlib")  # a dependency on this platform
    rows = filter_rows(to_uint8(_photo(64, 96))[0].numpy(), "up")
    assert [png_deflater(k) for k in (0, 1, 2, 3, 9)] == ["zlib", "isal", "zlib-rle", "zlib", "zlib"]
    assert deflate(rows, 1) == isal_zlib.compress(rows.tobytes(), ISAL_LEVEL)
    rle = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    assert deflate(rows, 2) == rle.compress(rows.tobytes()) + rle.flush()
    for level in range(10):
        assert zlib.decompress(deflate(rows, level)) == rows.tobytes()
    monkeypatch.setitem(sys.modules, "isal", None)  # no wheel for this platform: level 1 is level 2
    assert png_deflater(1) == "zlib-rle" and deflate(rows, 1) == deflate(rows, 2)


@pytest.mark.parametrize("png_filter", ["none", "sub", "up", "paeth"])
def test_every_png_filter_round_trips(png_filter):
    px = to_uint8(_photo(33, 47))[0].numpy()
    data = png_bytes(px, png_filter=png_filter)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), px)


def test_16_bit_png_keeps_at_least_12_bits_of_the_float(tmp_path):
    pyspng = pytest.importorskip("pyspng")
    img = _photo()
    (path,) = write_images(img, tmp_path / "o.png", OutputOptions(bit_depth=16))
    rgba = pyspng.load(path.read_bytes())  # libspng hands 16-bit RGB back as RGBA, alpha opaque
    assert rgba.dtype == np.uint16 and rgba.shape == (192, 256, 4) and (rgba[..., 3] == 65535).all()
    got = rgba[..., :3]
    assert np.array_equal(got.astype(np.int64), _rule(img, 65535))
    back = got.astype(np.float64) / 65535 * 2 - 1
    err = np.abs(back - np.clip(img[0].double().numpy(), -1, 1).transpose(1, 2, 0)).max()
    assert err <= 2.0 / 2**12  # one step of a 12-bit quantizer over [-1, 1]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def test_jpeg_q95_is_within_38_db_of_the_png(tmp_path):
    img = photo_like(512, 512, seed=5)
    (png,) = write_images(img, tmp_path / "o.png")
    (jpg,) = write_images(img, tmp_path / "o.jpg")
    with Image.open(jpg) as j, Image.open(png) as p:
        assert j.format == "JPEG"
        assert _psnr(np.asarray(j), np.asarray(p)) >= 38.0


def test_webp_lossless_is_the_png_pixels_and_lossy_is_close(tmp_path):
    img = photo_like(128, 160, seed=6)
    want = to_uint8(img)[0].numpy()
    (lossless,) = write_images(img, tmp_path / "a.webp", OutputOptions(webp_lossless=True))
    (lossy,) = write_images(img, tmp_path / "b.webp", OutputOptions(quality=90))
    with Image.open(lossless) as a, Image.open(lossy) as b:
        assert np.array_equal(np.asarray(a.convert("RGB")), want)
        assert _psnr(np.asarray(b.convert("RGB")), want) >= 30.0


def test_text_metadata_lands_in_png_and_jpeg(tmp_path):
    img = photo_like(16, 16)
    text = {"pid-trt": '{"seed": 7}', "Comment": "naïve ☃"}
    (png,) = write_images(img, tmp_path / "o.png", text=text)
    (jpg,) = write_images(img, tmp_path / "o.jpg", text={"pid-trt": '{"seed": 7}'})
    with Image.open(png) as p, Image.open(jpg) as j:
        assert p.text == text
        assert j.info["comment"] == b'pid-trt={"seed": 7}'


def test_uint16_decode_of_a_batch_by_quantize_matches_the_rule():
    img = _photo()
    assert np.array_equal(quantize(img, torch.uint16)[0].numpy().transpose(1, 2, 0), _rule(img, 65535))
    with pytest.raises(ValueError, match="uint8 or torch.uint16"):
        quantize(img, torch.int32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"png_level": 10}, "--png-level 10"),
        ({"quality": 0}, "--quality 0"),
        ({"bit_depth": 12}, "--bit-depth 12"),
    ],
)
def test_bad_options_are_refused_in_one_line(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        OutputOptions(**kwargs)


def test_16_bits_into_a_jpeg_is_refused_writing_nothing(tmp_path):
    with pytest.raises(InputFileError, match="--bit-depth 16 is for .png"):
        write_images(photo_like(8, 8), tmp_path / "o.jpg", OutputOptions(bit_depth=16))
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="uint8"):
        encode_image(np.zeros((2, 2, 3), np.uint16), OutputFormat.JPEG, OutputOptions())


def test_decoder_returns_quantized_pixels_on_request():
    from pid_trt import Decoder

    lat = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    with Decoder.load(backbone="tiny", random_weights=True) as dec:
        image = dec.decode(lat, seed=1)
        pixels = dec.decode(lat, seed=1, output_dtype=torch.uint8)
        kept = dec.decode(lat, seed=1, output_dtype=torch.uint8, keep_on_device=True)
        kept_float = dec.decode(lat, seed=1, keep_on_device=True)
        with pytest.raises(ConfigError, match="output_dtype"):
            dec.decode(lat, output_dtype=torch.float16)
    assert pixels.dtype == torch.uint8 and pixels.shape == image.shape
    assert torch.equal(pixels.permute(0, 2, 3, 1), to_uint8(image))
    # kept where decoded (the CPU here): the same pixels, each image's planes contiguous (nvJPEG's layout)
    assert torch.equal(kept, pixels) and kept[0].is_contiguous() and kept.device == image.device
    assert torch.equal(kept_float, image)


def test_pooled_output_rule_per_format_and_device(monkeypatch):
    """What a decode hands the writer pool: float for safetensors, uint16 for a 16-bit PNG,
    uint8 otherwise; left on the device only for a JPEG that nvJPEG encodes there (a CUDA
    device with torchvision importable), copied to the host for every other case."""
    import sys

    from pid_trt.io.encoders import jpeg_engine_on
    from pid_trt.io.images import pooled_output

    plain, deep = OutputOptions(), OutputOptions(bit_depth=16)
    assert pooled_output(OutputFormat.SAFETENSORS, plain, "cuda:0") == (torch.float32, False)
    assert pooled_output(OutputFormat.PNG, deep, "cpu") == (torch.uint16, False)
    assert pooled_output(OutputFormat.PNG, plain, "cuda:1") == (torch.uint8, False)
    assert pooled_output(OutputFormat.WEBP, plain, "cuda") == (torch.uint8, False)
    assert pooled_output(OutputFormat.JPEG, plain, "cpu") == (torch.uint8, False)
    assert pooled_output(OutputFormat.JPEG, plain, torch.device("cpu")) == (torch.uint8, False)
    assert jpeg_engine_on("cpu") == "pillow"
    monkeypatch.setitem(sys.modules, "torchvision", None)  # torchvision not importable: no nvJPEG
    assert jpeg_engine_on("cuda:0") == "pillow"
    assert pooled_output(OutputFormat.JPEG, plain, "cuda:0") == (torch.uint8, False)


def test_jpeg_of_a_cpu_tensor_is_pillows_libjpeg_turbo():
    """The encoder rule: a CPU tensor goes to Pillow (libjpeg-turbo), whatever is installed;
    the bytes are Pillow's own for the same pixels and settings (4:4:4 at q95)."""
    from pid_trt.io.encoders import jpeg_engine, jpeg_from_tensor

    pixels = quantize(_photo())[0]  # [3, H, W] uint8 on the CPU
    assert jpeg_engine(pixels) == "pillow"
    assert jpeg_engine(pixels.permute(1, 2, 0).numpy()) == "pillow"
    buf = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=95, subsampling=0)
    assert jpeg_from_tensor(pixels, quality=95) == buf.getvalue()
    with Image.open(io.BytesIO(jpeg_from_tensor(pixels, quality=95, text={"k": "v"}))) as im:
        assert im.info["comment"] == b"k=v"


@pytest.mark.gpu
def test_jpeg_of_a_cuda_tensor_is_encoded_on_the_device(tmp_path):
    """nvJPEG (torchvision) for CUDA pixels: a JPEG Pillow reads, within 30 dB of the pixels,
    its COM text; the writer pool writes it from CUDA pixels and CUDA float images."""
    pytest.importorskip("torchvision")
    from pid_trt.io.encoders import jpeg_engine, jpeg_from_tensor
    from pid_trt.io.writer import ImageWriter

    img = _photo().cuda()
    pixels = quantize(img)
    assert jpeg_engine(pixels[0]) == "nvjpeg"
    data = jpeg_from_tensor(pixels[0], quality=95, text={"k": "v"})
    with Image.open(io.BytesIO(data)) as im:
        got = np.asarray(im.convert("RGB")).astype(np.float64)
        assert im.info["comment"] == b"k=v"
    want = pixels[0].permute(1, 2, 0).cpu().numpy().astype(np.float64)
    assert 10 * np.log10(255.0**2 / np.mean((got - want) ** 2)) >= 30.0
    with ImageWriter(2) as writer:
        a = writer.submit(pixels, tmp_path / "a.jpg")
        b = writer.submit(img, tmp_path / "b.jpg")
    assert a.result() == [tmp_path / "a.jpg"] and b.result() == [tmp_path / "b.jpg"]
    assert (tmp_path / "a.jpg").read_bytes() == (tmp_path / "b.jpg").read_bytes()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_decode_cli_jpegs_are_the_encoder_rules_bytes(tmp_path, device):
    """`pidtrt decode DIR -o 'OUT/{stem}.jpg' --device D`: the files hold the pixels of the
    encoder :func:`~pid_trt.io.encoders.jpeg_from_tensor` picks for the decode's own pixels
    (on CUDA with torchvision: nvJPEG, the pixels left on the GPU by the pooled-output rule;
    on the CPU: libjpeg-turbo), the same bytes with 2 writer threads as with none, and within
    30 dB of the lossless pixels."""
    import subprocess
    import sys

    from pid_trt import Decoder
    from pid_trt.io import write_latent_file
    from pid_trt.io.encoders import jpeg_engine_on, jpeg_from_tensor
    from pid_trt.io.images import pooled_output

    if device == "cuda":
        pytest.importorskip("torchvision")
    assert pooled_output(OutputFormat.JPEG, OutputOptions(), device)[1] == (
        jpeg_engine_on(device) == "nvjpeg"
    )
    src = tmp_path / "in"
    src.mkdir()
    lat = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    write_latent_file(src / "a.safetensors", lat, backbone="tiny")
    for writers in ("0", "2"):
        out = f"{tmp_path}/w{writers}/{{stem}}.jpg"
        cmd = ["decode", src, "-o", out, "--backbone", "tiny", "--random-weights", "--device", device]
        res = subprocess.run(
            [sys.executable, "-m", "pid_trt.cli.main", *map(str, cmd), "--writers", writers],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
    pooled = (tmp_path / "w2" / "a.jpg").read_bytes()
    assert pooled == (tmp_path / "w0" / "a.jpg").read_bytes()
    with Decoder.load(backbone="tiny", random_weights=True, device=device) as dec:
        pixels = dec.decode(lat, output_dtype=torch.uint8, keep_on_device=True)
    assert pixels.device.type == device
    want = jpeg_from_tensor(pixels[0], quality=95)
    with Image.open(io.BytesIO(pooled)) as got, Image.open(io.BytesIO(want)) as ref:
        assert np.array_equal(np.asarray(got), np.asarray(ref))  # the files' text differs, not their pixels
        err = np.asarray(got).astype(np.float64) - pixels[0].permute(1, 2, 0).cpu().numpy()
    assert 10 * np.log10(255.0**2 / np.mean(err**2)) >= 30.0
