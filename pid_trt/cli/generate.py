"""``pidtrt generate``: prompt -> local diffusers pipeline -> early capture -> PiD -> image."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from pid_trt.cli.errors import cli_errors, warn
from pid_trt.cli.options import (
    BackendName,
    Checkpoint,
    CkptType,
    Device,
    EngineDir,
    ExportDir,
    NetConfigFile,
    PrecisionName,
    RandomWeights,
    WeightsSeed,
    net_options,
    runtime_options,
)
from pid_trt.errors import ConfigError


def _dtype(text: str | None, device: str):
    import torch

    if text is None:
        text = "bf16" if device.startswith("cuda") else "fp32"
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if text not in table:
        raise ConfigError(f"--ldm-dtype {text!r}: expected fp32, bf16 or fp16")
    return table[text]


def quiet_hf_logs() -> None:
    """Keep diffusers' / transformers' progress bars and advice lines out of the CLI's output
    (errors still show)."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"diffusers\..*")
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()


@cli_errors
def generate(
    pipeline: Path = typer.Option(
        ..., "--pipeline", help="Local diffusers pipeline folder (model_index.json)."
    ),
    prompt: str = typer.Option(..., "--prompt", help="Text prompt (the LDM's, and PiD's caption)."),
    output: Path = typer.Option(..., "-o", "--output", help="out.png or out.safetensors (as pidtrt decode)."),
    backbone: str | None = typer.Option(
        None,
        "--backbone",
        help="The LDM: flux, flux2, flux2_klein, sd3, sdxl, qwenimage, zimage, zimage_turbo "
        "(default: from the pipeline class).",
    ),
    res: int = typer.Option(2048, "--res", help="Output size in pixels (square); see --size."),
    size: str | None = typer.Option(None, "--size", help="Output WxH in pixels (instead of --res)."),
    capture_step: int | None = typer.Option(
        None,
        "--capture-step",
        help="Keep the latent after this LDM step (default: upstream's, e.g. 24 of 28).",
    ),
    steps: int | None = typer.Option(
        None, "--steps", help="LDM steps (default: upstream's for the backbone)."
    ),
    guidance_scale: float | None = typer.Option(
        None, "--guidance-scale", help="LDM guidance (default: upstream's)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the LDM's noise and of PiD's sampler."),
    save_latent: Path | None = typer.Option(
        None, "--save-latent", help="Also write the PiD latent file (pidtrt decode reproduces the image)."
    ),
    pid: str | None = typer.Option(
        None,
        "--pid",
        help="PiD preset when not the LDM's own (e.g. tiny, small); see also --net-config.",
    ),
    ckpt_type: CkptType = None,
    checkpoint: Checkpoint = None,
    net_config: NetConfigFile = None,
    random_weights: RandomWeights = False,
    weights_seed: WeightsSeed = 0,
    text_encoder: str | None = typer.Option(
        None,
        "--text-encoder",
        envvar="PIDTRT_TEXT_ENCODER",
        show_envvar=True,
        help="Local Gemma-2-2B-it directory for PiD's caption.",
    ),
    text_dtype: str | None = typer.Option(
        None, "--text-dtype", help="Caption encoder precision: fp32 or bf16."
    ),
    backend: BackendName = "torch",
    device: Device = None,
    dtype: PrecisionName = None,
    ldm_dtype: str | None = typer.Option(
        None,
        "--ldm-dtype",
        help="Pipeline precision: fp32, bf16 or fp16 (default: bf16 on cuda, fp32 on cpu).",
    ),
    engine_dir: EngineDir = Path("engines"),
    export_dir: ExportDir = Path("export"),
) -> None:
    """Generate an image with a local diffusers pipeline, decoded by PiD from an early latent."""
    import torch

    from pid_trt import Decoder
    from pid_trt.buckets import parse_size
    from pid_trt.integrations.diffusers import generate as run_generate
    from pid_trt.integrations.diffusers import load_pipeline
    from pid_trt.integrations.ldm import check_decoder_fits, ldm_for_pipeline, ldm_spec
    from pid_trt.io import write_images, write_latent_file
    from pid_trt.netspec import resolve_net

    ldm = ldm_spec(backbone) if backbone is not None else None
    if pid is not None and net_config is not None:
        raise ConfigError("--pid and --net-config exclude each other: a preset fixes the net config")
    if net_config is not None and ckpt_type is not None:
        raise ConfigError("--ckpt-type needs a preset (--pid or the backbone's), not --net-config")
    height, width = parse_size(size) if size is not None else (res, res)
    runtime = runtime_options(backend, dtype, device, engine_dir, export_dir).resolved()
    device = runtime.device
    torch_dtype = _dtype(ldm_dtype, device)
    if not pipeline.is_dir():
        raise ConfigError(f"--pipeline {pipeline}: not a directory")
    quiet_hf_logs()

    def preset_name(spec) -> str | None:
        return None if net_config is not None else (pid or spec.backbone.value)

    if ldm is not None:  # refuse a PiD net that cannot take this latent before loading anything
        net = resolve_net(preset_name(ldm), ckpt_type, checkpoint, net_config, random_weights, weights_seed)
        check_decoder_fits(net.config, ldm)
    start = time.perf_counter()
    pipe = load_pipeline(pipeline, device, torch_dtype)
    if ldm is None:
        ldm = ldm_for_pipeline(pipe)
    with Decoder.from_options(
        net_options(preset_name(ldm), ckpt_type, checkpoint, net_config, random_weights, weights_seed),
        runtime,
        text_encoder=text_encoder, text_dtype=text_dtype,
    ) as dec:  # fmt: skip
        if random_weights:
            warn("--random-weights: the PiD network is randomly initialised; the image means nothing")
        extra = {"guidance_scale": guidance_scale} if guidance_scale is not None else {}
        result = run_generate(
            pipe, dec, prompt, height, width, capture_step, seed, backbone=ldm.name,
            num_inference_steps=steps, **extra,
        )  # fmt: skip
    written = write_images(result.image, output)
    if save_latent is not None:
        sigma = torch.tensor([result.degrade_sigma], dtype=torch.float32)
        write_latent_file(save_latent, result.latent, result.caption, sigma, backbone=ldm.backbone.value)
    names = ", ".join(str(p) for p in written)
    latent_note = f"; latent -> {save_latent}" if save_latent is not None else ""
    typer.echo(
        f"wrote {names} ({width}x{height}; {ldm.name} at {result.ldm_size[1]}x{result.ldm_size[0]}, "
        f"latent after step {result.step} of {result.steps}, degrade_sigma {result.degrade_sigma:.4f}"
        f"{latent_note}) in {time.perf_counter() - start:.2f} s"
    )
