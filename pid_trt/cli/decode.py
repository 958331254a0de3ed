"""``pidtrt decode``: latent file in, image(s) out, on any backend."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from pid_trt.cli.errors import cli_errors, warn
from pid_trt.cli.options import (
    BackboneOpt,
    CheckpointOpt,
    CkptTypeOpt,
    NetConfigOpt,
    RandomWeightsOpt,
    TextDtypeOpt,
    TextEncoderOpt,
    WeightsSeedOpt,
)
from pid_trt.errors import ConfigError, InputFileError
from pid_trt.io.caption import read_caption_file


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
    prompt: list[str] = typer.Option(
        [], "--prompt", help="Caption text (one, or one per batch row), encoded with --text-encoder."
    ),
    caption: Path | None = typer.Option(
        None, "--caption", help="Caption file from `pidtrt encode-caption` (caption_embedding [N, T, D])."
    ),
    text_encoder: Path | None = TextEncoderOpt,
    text_dtype: str | None = TextDtypeOpt,
) -> None:
    """Decode a latent file into image(s)."""
    from pid_trt.decoder import Decoder
    from pid_trt.io import read_latent_file, read_noise_file, write_images

    if prompt and caption is not None:
        raise ConfigError("--prompt and --caption exclude each other: pass one")
    decoder = Decoder.load(
        backbone=backbone, ckpt_type=ckpt_type, checkpoint=checkpoint, net_config=net_config,
        random_weights=random_weights, weights_seed=weights_seed, backend=backend, precision=dtype,
        device=device, engine_dir=engine_dir, export_dir=export_dir, hoist=not no_hoist,
        cuda_graph=cuda_graph, text_encoder=text_encoder, text_dtype=text_dtype,
        memory_check=not no_memory_check, memory_hint="pass --no-memory-check to try anyway",
    )  # fmt: skip
    with decoder:
        spec, config = decoder.spec, decoder.config
        lat = read_latent_file(latent, config)
        caption_emb = lat.caption
        if caption_emb is not None and (prompt or caption is not None):
            given = "--prompt" if prompt else "--caption"
            raise ConfigError(
                f"latent file {latent} already has a caption_embedding: drop {given}, or write the latent "
                "without one"
            )
        if caption is not None:
            caption_emb = read_caption_file(caption, config, lat.batch)
        elif not prompt and caption_emb is None and (spec.released_preset or not spec.random_weights):
            raise InputFileError(
                f"latent file {latent} has no caption_embedding: pass --prompt TEXT (with --text-encoder DIR), "
                f"--caption FILE (from `pidtrt encode-caption`), or add tensor `caption_embedding` "
                f"[B, {config.txt_max_length}, {config.txt_embed_dim}] (see README, 'Caption embeddings')"
            )
        height, width = decoder.output_size(lat.latent_hw, size)
        if spec.random_weights:
            warn("--random-weights: the network is randomly initialised; the image means nothing")
        draws = read_noise_file(noise, steps, lat.batch, height, width) if noise is not None else None
        start = time.perf_counter()
        image = decoder.decode(
            lat.latent, caption_emb, prompt=(prompt if len(prompt) > 1 else prompt[0]) if prompt else None,
            degrade_sigma=lat.degrade_sigma, seed=seed, noise=draws, size=(height, width), steps=steps,
        )  # fmt: skip
        written = write_images(image, output)
        elapsed = time.perf_counter() - start
    names = ", ".join(str(p) for p in written)
    typer.echo(
        f"wrote {names} ({width}x{height}, batch {lat.batch}, {steps} steps, {decoder.backend_name}) in {elapsed:.2f} s"
    )
