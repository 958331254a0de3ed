"""``pidtrt bench --pipeline``: the host path of a decode run, measured per stage, with the
network replaced (optionally) by a timed wait that stands for a GPU.

Per image: read the latent file, copy it to the device, run the network (or wait ``device_ms``,
the simulated device, handing back a photo-like image made once beforehand), quantize, copy
the pixels to the host, encode and write, as the decode front ends do. Two paths:

- ``pipelined`` (today's front ends): quantized on the device (for a simulated device the
  quantization is the device's, so the host is charged only the uint8 copy), encoded with the
  fast encoders and written by an :class:`~pid_trt.io.writer.ImageWriter` pool while the
  next image is decoded, the next latent files read ahead on a thread of their own;
- ``serial`` (before this pipeline): the float image copied to the host, quantized there in
  float64, PNG through Pillow at level 6 (JPEG through Pillow), written in the decoding thread.

Steady-state images/s counts from the end of the first image (warm-up) to the last file
written. Host-core figures: host CPU seconds per image (the stages the host runs) over the
device's seconds per image: how many cores keep one GPU busy.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pid_trt.atomic import atomic_write
from pid_trt.io.encoders import OutputFormat, OutputOptions, png_deflater
from pid_trt.io.images import quantize, to_uint8
from pid_trt.io.readahead import ReadAhead
from pid_trt.io.writer import ImageWriter

SCHEMA = "pidtrt-bench-pipeline/1"
#: zlib level of Pillow's PNG writer before this pipeline (its default).
SERIAL_PNG_LEVEL = 6


@dataclass(frozen=True)
class PipelineCase:
    """One measured configuration. ``path``: "pipelined" or "serial"; ``device_ms``: the
    simulated device's time per image (None: the real network runs)."""

    width: int
    height: int
    fmt: OutputFormat
    path: str
    writers: int
    images: int
    device_ms: float | None
    options: OutputOptions = OutputOptions()


@dataclass
class PipelineRecord:
    """What one case measured. Stage times are mean milliseconds per image; ``read_latent``,
    ``encode`` and ``write`` are thread time (they overlap the decode when pipelined: the
    decoding thread waits ``read_wait`` for the latent read ahead)."""

    label: str
    backbone: str
    width: int
    height: int
    format: str
    path: str
    writers: int
    images: int
    png_level: int | None
    quality: int | None
    simulated_device_ms: float | None
    simulated_device_images_per_s: float | None
    images_per_s: float
    fraction_of_device: float | None
    bytes_per_image: float
    host_cpu_ms_per_image: float
    host_cores_per_gpu: float | None
    stages_ms: dict[str, float] = field(default_factory=dict)
    encoder: str = (
        ""  # what encoded the images: pillow, isal, zlib-rle, zlib (pid_trt.io.encoders.png_deflater)
    )

    def to_dict(self) -> dict:
        return asdict(self)


def _stage(stages: dict[str, float], name: str, start: float) -> float:
    now = time.perf_counter()
    stages[name] = stages.get(name, 0.0) + (now - start)
    return now


def run_case(
    case: PipelineCase,
    latent_file: Path,
    read_latent: Callable[[Path], torch.Tensor],
    network: Callable[[torch.Tensor], torch.Tensor],
    workdir: Path,
    label: str = "",
    backbone: str = "",
) -> PipelineRecord:
    """Measure ``case``: ``images`` decodes of ``latent_file`` (read by ``read_latent``) through
    ``network`` (latent -> float [1, 3, H, W] on the device; for a simulated device, the
    device's own uint8 pixels [1, 3, H, W] when the case is pipelined), files into ``workdir``.
    Pipelined, the next latent files are read ahead (:class:`~pid_trt.io.readahead.ReadAhead`,
    as a decode over many files reads them): ``read_latent`` then counts the wait for it."""
    fmt, pipelined = case.fmt, case.path == "pipelined"
    options = (
        case.options if pipelined else OutputOptions(png_level=SERIAL_PNG_LEVEL, quality=case.options.quality)
    )
    suffix = ".jpg" if fmt is OutputFormat.JPEG else f".{fmt.value}"
    stages: dict[str, float] = {}
    serial_clock = [0.0, 0.0, 0]  # encode s, write s, bytes (serial path)
    timed_read = _TimedRead(read_latent)  # seconds spent reading latent files, on whichever thread
    files = [latent_file] * case.images if pipelined else []
    begin = warm = time.perf_counter()
    with (
        ImageWriter(case.writers if pipelined else 0) as writer,
        ReadAhead(files, timed_read, depth=2) as ahead,
    ):
        read = ahead.take if pipelined else timed_read
        for i in range(case.images):
            t = time.perf_counter()
            latent = read(latent_file)
            t = _stage(stages, "read_wait", t)
            latent = latent.clone()  # the host -> device copy (a GPU run copies it over PCIe)
            t = _stage(stages, "device_copy", t)
            image = network(latent)
            t = _stage(stages, "device", t)
            target = workdir / f"img{i:04d}{suffix}"
            if pipelined:
                _pipelined_out(image, target, options, writer, stages, t)
            else:
                _serial_out(image, target, fmt, options, stages, serial_clock, t)
            if i == 0:  # the first image warms up: out of the steady rate and of the stage means
                warm = time.perf_counter()
                stages.clear()
    end = time.perf_counter()
    n = case.images
    stages["read_latent"] = timed_read.seconds
    if pipelined:
        stages["encode"], stages["write"] = writer.clock.encode, writer.clock.write
        nbytes = writer.clock.nbytes
    else:
        stages["encode"], stages["write"] = serial_clock[0], serial_clock[1]
        nbytes = int(serial_clock[2])
    steady = (n - 1) / (end - warm) if n > 1 and end > warm else n / (end - begin)
    per_image = {k: round(v / max(1, n - 1) * 1000, 2) for k, v in stages.items()}
    for k in ("read_latent", "encode", "write"):  # thread time over every image, the warm-up's too
        per_image[k] = round(stages[k] / n * 1000, 2)
    host_keys: tuple[str, ...] = ("read_latent", "device_copy", "quantize", "host_copy", "encode", "write")
    device_ms = case.device_ms if case.device_ms is not None and case.device_ms > 0 else None
    simulated = device_ms is not None
    if simulated and pipelined:  # the quantization ran on the (simulated) device
        host_keys = tuple(k for k in host_keys if k != "quantize")
    host_ms = sum(per_image.get(k, 0.0) for k in host_keys)
    device_rate = 1000.0 / device_ms if device_ms is not None else None
    return PipelineRecord(
        label=label or f"{case.path} {fmt.value}", backbone=backbone, width=case.width, height=case.height,
        format=fmt.value, path=case.path, writers=case.writers if pipelined else 0, images=n,
        png_level=options.png_level if fmt is OutputFormat.PNG else None,
        quality=options.quality if fmt is not OutputFormat.PNG else None,
        simulated_device_ms=device_ms,
        simulated_device_images_per_s=round(device_rate, 3) if device_rate else None,
        images_per_s=round(steady, 3),
        fraction_of_device=round(steady / device_rate, 3) if device_rate else None,
        bytes_per_image=round(nbytes / n), host_cpu_ms_per_image=round(host_ms, 1),
        host_cores_per_gpu=round(host_ms / device_ms, 2) if device_ms is not None else None, stages_ms=per_image,
        encoder=png_deflater(options.png_level) if pipelined and fmt is OutputFormat.PNG else "pillow",
    )  # fmt: skip


class _TimedRead:
    """``read`` that sums the seconds it took (read ahead, on another thread, or in place)."""

    def __init__(self, read: Callable[[Path], torch.Tensor]) -> None:
        self.read, self.seconds = read, 0.0

    def __call__(self, path: Path) -> torch.Tensor:
        start = time.perf_counter()
        try:
            return self.read(path)
        finally:
            self.seconds += time.perf_counter() - start


def _pipelined_out(
    image, target: Path, options: OutputOptions, writer: ImageWriter, stages, t: float
) -> None:
    """Today's hand-over: pixels quantized on the device, one uint8 copy, queued for the pool."""
    pixels = image if not image.is_floating_point() else quantize(image)
    t = _stage(stages, "quantize", t)
    pixels = pixels.clone()  # the device -> host copy of the uint8 pixels
    t = _stage(stages, "host_copy", t)
    writer.submit(pixels, target, options)
    _stage(stages, "submit_wait", t)


def _serial_out(
    image, target: Path, fmt: OutputFormat, options: OutputOptions, stages, clock, t: float
) -> None:
    """Before the pipeline: float copy, host quantize, Pillow encode and write in this thread."""
    host = image.clone()  # the device -> host copy of the float32 image
    t = _stage(stages, "host_copy", t)
    px = to_uint8(host)[0].numpy()
    t = _stage(stages, "quantize", t)
    data = _serial_encode(px, fmt, options)
    t2 = time.perf_counter()
    clock[0] += t2 - t
    with atomic_write(target) as tmp:
        Path(tmp).write_bytes(data)
    clock[1] += time.perf_counter() - t2
    clock[2] += len(data)


def _serial_encode(px, fmt: OutputFormat, options: OutputOptions) -> bytes:
    """The writers before this pipeline: Pillow PNG at its default level, Pillow JPEG/WebP."""
    from PIL import Image

    buf = io.BytesIO()
    if fmt is OutputFormat.PNG:
        Image.fromarray(px).save(buf, format="PNG", compress_level=options.png_level)
    elif fmt is OutputFormat.JPEG:
        Image.fromarray(px).save(buf, format="JPEG", quality=options.quality)
    else:
        Image.fromarray(px).save(buf, format="WEBP", quality=options.quality)
    return buf.getvalue()


def simulated_network(device_ms: float, image: torch.Tensor, pixels: torch.Tensor, as_pixels: bool):
    """The network replaced by a wait: returns after ``device_ms`` from its call, handing back
    the (precomputed) ``pixels`` (uint8, quantized on the device) or float ``image``."""
    out = pixels if as_pixels else image

    def network(_latent: torch.Tensor) -> torch.Tensor:
        deadline = time.perf_counter() + device_ms / 1000.0
        while (left := deadline - time.perf_counter()) > 0:
            time.sleep(left)
        return out

    return network


def workspace() -> tempfile.TemporaryDirectory:
    """A temporary folder in the current one for the benchmark's files (removed afterwards)."""
    return tempfile.TemporaryDirectory(dir=".", prefix=".pidtrt-bench-pipeline-")


@dataclass(frozen=True)
class PipelinePlan:
    """What ``pidtrt bench --pipeline`` runs: every size x format, pipelined (and serial, when
    ``serial``), ``images`` each; ``device_ms`` per size (None: the real network, ``decoder``)."""

    backbone: str
    sizes: tuple[tuple[int, int], ...]
    formats: tuple[OutputFormat, ...]
    images: int
    writers: int
    options: OutputOptions
    device_ms: tuple[float | None, ...]
    serial: bool = True


def run_pipeline_bench(plan: PipelinePlan, config, decoder=None, progress=None) -> list[PipelineRecord]:
    """Run ``plan`` (``config``: the net's :class:`~pid_trt.config.NetConfig`, for the latent
    file's shape; ``decoder``: a loaded :class:`pid_trt.Decoder` when no device is simulated)."""
    from pid_trt.bench.photo import photo_like
    from pid_trt.io.latent import read_latent_file, write_latent_file

    records = []
    with workspace() as tmp:
        work = Path(tmp)
        for (height, width), device_ms in zip(plan.sizes, plan.device_ms, strict=True):
            p = config.pixels_per_latent
            lh, lw = -(-height // p), -(-width // p)
            gen = torch.Generator().manual_seed(0)
            latent = torch.randn(1, config.lq_latent_channels, lh, lw, generator=gen)
            caption = torch.randn(1, config.txt_max_length, config.txt_embed_dim, generator=gen)
            latent_file = work / f"latent_{width}x{height}.safetensors"
            write_latent_file(latent_file, latent, caption)
            photo = photo_like(height, width, seed=1)  # made once, off every timed path
            pixels = quantize(photo).contiguous(
                memory_format=torch.channels_last
            )  # as the Decoder hands them
            cases = [
                PipelineCase(width, height, fmt, path, plan.writers, plan.images, device_ms, plan.options)
                for fmt in plan.formats
                for path in (("serial", "pipelined") if plan.serial else ("pipelined",))
            ]
            for case in cases:
                if progress is not None:
                    progress(case)
                net = _network(case, decoder, photo, pixels, (height, width))
                out = work / f"{case.path}_{case.fmt.value}_{width}x{height}"
                out.mkdir()
                records.append(
                    run_case(case, latent_file, lambda f: read_latent_file(f, config).latent, net, out,
                             backbone=plan.backbone)
                )  # fmt: skip
                for f in out.iterdir():
                    f.unlink()
    return records


def _network(case: PipelineCase, decoder, photo: torch.Tensor, pixels: torch.Tensor, size):
    if case.device_ms is not None:
        return simulated_network(case.device_ms, photo, pixels, as_pixels=case.path == "pipelined")
    if decoder is None:
        raise ValueError("no simulated device and no decoder: nothing to run the network")
    as_pixels = case.path == "pipelined"
    dtype = torch.uint8 if as_pixels else torch.float32
    return lambda latent: decoder.decode(latent, size=size, output_dtype=dtype)


def device_floor_ms(backbone: str, height: int, width: int, spec: str) -> float:
    """The cost model's floor for one 4-step decode, in ms, for ``spec`` "GPU:PRECISION"
    (``h100:bf16``, ``h100:fp8``, ``h200:bf16`` ...; GPU names as :data:`pid_trt.costmodel.GPUS`,
    "h100" for the H100 SXM)."""
    from pid_trt.config import Precision, get_preset
    from pid_trt.costmodel import GPUS, estimate, floor_time, get_gpu
    from pid_trt.errors import ConfigError

    gpu_name, _, precision = spec.partition(":")
    names = {n.lower().replace(" ", ""): n for n in GPUS} | {"h100": "H100 SXM"}
    name = names.get(gpu_name.lower().replace(" ", ""), gpu_name)
    try:
        prec = Precision(precision or "bf16")
    except ValueError:
        raise ConfigError(
            f"--simulate-device {spec}: expected GPU:PRECISION, e.g. h100:bf16 or h100:fp8"
        ) from None
    config = get_preset(backbone).config
    return 1000.0 * floor_time(estimate(config, height, width), get_gpu(name), prec, per="decode")


def render_markdown(records: list[PipelineRecord], title: str | None = None) -> str:
    """The records as a Markdown table (one row per case) with the per-image stages."""
    stages = (
        "read_latent",
        "read_wait",
        "device_copy",
        "device",
        "quantize",
        "host_copy",
        "submit_wait",
        "encode",
        "write",
    )
    head = ["size", "format", "encoder", "path", "writers", "device ms", "device img/s", "img/s", "of device",
            "MB/img", "host CPU ms/img", "cores/GPU", *(f"{s} ms" for s in stages)]  # fmt: skip
    lines = [f"## {title}" if title else "## Host pipeline", "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "---|" * len(head))
    for r in records:
        dev = "-" if r.simulated_device_ms is None else f"{r.simulated_device_ms:.0f}"
        rate = "-" if r.simulated_device_images_per_s is None else f"{r.simulated_device_images_per_s:.2f}"
        frac = "-" if r.fraction_of_device is None else f"{100 * r.fraction_of_device:.0f} %"
        cores = "-" if r.host_cores_per_gpu is None else f"{r.host_cores_per_gpu:.2f}"
        cells = [f"{r.width}x{r.height}", r.format, r.encoder, r.path, str(r.writers), dev, rate, f"{r.images_per_s:.2f}",
                 frac, f"{r.bytes_per_image / 1e6:.2f}", f"{r.host_cpu_ms_per_image:.0f}", cores,
                 *(f"{r.stages_ms.get(s, 0.0):.0f}" if s in r.stages_ms else "-" for s in stages)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def dump_document(records: list[PipelineRecord], meta: dict) -> str:
    """The ``--json`` document: {"schema", "meta", "records": [...]}."""
    import json

    return (
        json.dumps({"schema": SCHEMA, "meta": meta, "records": [r.to_dict() for r in records]}, indent=2)
        + "\n"
    )
