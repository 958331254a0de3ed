"""``pidtrt decode``: latent file in, image(s) out, on any backend."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from pid_trt.buckets import Bucket, check_bucket, parse_size
from pid_trt.cli.errors import cli_errors, warn
from pid_trt.cli.options import (
    BackboneOpt,
    CheckpointOpt,
    CkptTypeOpt,
    NetConfigOpt,
    RandomWeightsOpt,
    WeightsSeedOpt,
    resolve_net,
)
from pid_trt.config import DecoderConfig
from pid_trt.errors import ConfigError, InputFileError


def output_size(config: DecoderConfig, latent_hw: tuple[int, int], size: str | None) -> tuple[int, int]:
    """Output (height, width) in pixels: latent x pixels per cell, or ``--size`` when it rounds up
    to the same latent (e.g. 2160 rows from a 68-row flux latent: ceil(2160 / 32) = 68)."""
    if size is None:
        return config.output_size(*latent_hw)
    height, width = parse_size(size)
    p = config.pixels_per_latent
    want = (-(-height // p), -(-width // p))
    if height % 16 or width % 16 or want != tuple(latent_hw):
        lo_h, lo_w = (latent_hw[0] - 1) * p + 16, (latent_hw[1] - 1) * p + 16
        raise ConfigError(
            f"--size {size}: a {latent_hw[0]}x{latent_hw[1]} latent decodes to widths {lo_w}..{latent_hw[1] * p} "
            f"and heights {lo_h}..{latent_hw[0] * p} (multiples of 16)"
        )
    return height, width


@cli_errors
def decode(
    latent: Path = typer.Argument(
        ..., help="Latent file (safetensors: latent, caption_embedding, degrade_sigma)."
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="out.png (out_0.png, out_1.png ... for B > 1) or out.safetensors."
    ),
    backbone: str | None = BackboneOpt,
    ckpt_type: str | None = CkptTypeOpt,
    checkpoint: Path | None = CheckpointOpt,
    net_config: Path | None = NetConfigOpt,
    random_weights: bool = RandomWeightsOpt,
    weights_seed: int = WeightsSeedOpt,
    noise: Path | None = typer.Option(
        None, "--noise", help="Noise file [S, B, 3, H, W] for reproducible decodes."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampler's noise (ignored with --noise)."),
    steps: int = typer.Option(
        4, "--steps", min=1, help="Sampling steps (4 = the released distilled sampler)."
    ),
    backend: str = typer.Option("torch", "--backend", help="torch, onnxruntime or tensorrt."),
    device: str | None = typer.Option(
        None, "--device", help="cpu or cuda (default: cuda for tensorrt, else cpu)."
    ),
    dtype: str | None = typer.Option(
        None,
        "--dtype",
        help="torch: fp32|bf16; onnxruntime: fp32|fp16|bf16; tensorrt: the engine's fp16|bf16|fp8|fp32 "
        "(default: fp32, and bf16 for tensorrt, as pidtrt build).",
    ),
    engine_dir: Path = typer.Option(Path("engines"), "--engine-dir", help="Engine store (tensorrt backend)."),
    export_dir: Path = typer.Option(Path("export"), "--export-dir", help="ONNX store (onnxruntime backend)."),
    size: str | None = typer.Option(
        None,
        "--size",
        help="Output WxH when it is not latent x down factor x sr scale (e.g. 3840x2160 from a 68x120 latent).",
    ),
    no_hoist: bool = typer.Option(
        False,
        "--no-hoist",
        help="Re-run the latent adapter and caption projection every step (as upstream; slower).",
    ),
    no_memory_check: bool = typer.Option(
        False, "--no-memory-check", help="Skip the up-front check that the decode fits the device memory."
    ),
    cuda_graph: bool = typer.Option(
        False, "--cuda-graph", help="Replay the step engine as a CUDA graph (tensorrt)."
    ),
) -> None:
    """Decode a latent file into image(s)."""
    from pid_trt.backends.base import Conditioning
    from pid_trt.backends.factory import BackendRequest, create_backend
    from pid_trt.io import read_latent_file, read_noise_file, write_images
    from pid_trt.resources import check_decode_memory, run_guarded
    from pid_trt.sampling import draw_noise, sample

    if dtype is None:
        dtype = "bf16" if backend == "tensorrt" else "fp32"  # tensorrt: pidtrt build's default
    if device is None:
        device = "cuda" if backend == "tensorrt" else "cpu"
    elif backend == "tensorrt" and not device.startswith("cuda"):
        raise ConfigError(f"--device {device}: the tensorrt backend runs on cuda")
    spec = resolve_net(backbone, ckpt_type, checkpoint, net_config, random_weights, weights_seed)
    config = spec.config
    lat = read_latent_file(latent, config)
    caption = lat.caption
    if caption is None:
        if spec.released_preset or not spec.random_weights:
            raise InputFileError(
                f"latent file {latent} has no caption_embedding: add one as tensor `caption_embedding` "
                f"[B, {config.txt_max_length}, {config.txt_embed_dim}] (Gemma-2-2B hidden states of the caption; "
                "see README, 'Caption embeddings')"
            )
        import torch

        gen = torch.Generator().manual_seed(seed)
        caption = torch.randn(lat.batch, config.txt_max_length, config.txt_embed_dim, generator=gen)
    height, width = output_size(config, lat.latent_hw, size)
    notice = check_bucket(Bucket(height=height, width=width), spec.preset)
    if notice:
        warn(notice)
    mem_device = "cuda" if backend == "tensorrt" else device
    if not no_memory_check:
        check_decode_memory(
            config, height, width, lat.batch, dtype, mem_device, steps,
            load_precision="fp32" if backend == "torch" and mem_device == "cpu" else None,
            hint="pass --no-memory-check to try anyway",
        )  # fmt: skip
    if spec.random_weights:
        warn("--random-weights: the network is randomly initialised; the image means nothing")
    draws = read_noise_file(noise, steps, lat.batch, height, width) if noise is not None else None

    request = BackendRequest(
        kind=backend, spec=spec, device=device, dtype=dtype, height=height, width=width,
        batch=lat.batch, engine_dir=engine_dir, export_dir=export_dir, hoist=not no_hoist,
        cuda_graph=cuda_graph,
    )  # fmt: skip
    start = time.perf_counter()

    def run():
        noise_draws = draws if draws is not None else draw_noise((lat.batch, 3, height, width), steps, seed)
        runner = create_backend(request)
        try:
            cond = Conditioning(lat.latent, caption, lat.degrade_sigma, height, width)
            denoiser = runner.bind(cond)
            return sample(denoiser, [d.to(request.torch_device) for d in noise_draws], steps)
        finally:
            runner.close()

    image = run_guarded(run, f"decode of batch {lat.batch} at {width}x{height}", mem_device)
    written = write_images(image.float().cpu(), output)
    elapsed = time.perf_counter() - start
    names = ", ".join(str(p) for p in written)
    typer.echo(
        f"wrote {names} ({width}x{height}, batch {lat.batch}, {steps} steps, {backend}) in {elapsed:.2f} s"
    )
