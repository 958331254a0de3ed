"""``pidtrt generate``: prompt -> local diffusers pipeline -> early capture -> PiD -> image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pid_trt.cli.errors import cli_errors
from pid_trt.cli.flags import PromptsFile, SkipExisting, TextEncoderEnv
from pid_trt.cli.options import (
    Checkpoint,
    CkptType,
    NetConfigFile,
    RandomWeights,
    TextDtype,
    WeightsSeed,
    net_options,
    with_captions,
    with_runtime,
    with_tile_options,
)
from pid_trt.cli.outputs import Writers, with_output
from pid_trt.cli.panels import IO_PANEL, MODEL_PANEL, RUNTIME_PANEL, SIZE_PANEL
from pid_trt.cli.ranks import RankConsole, Threads, finish_run, join_world
from pid_trt.config import Backbone as PresetName
from pid_trt.integrations.ldm import ldm_names
from pid_trt.io.encoders import OutputOptions
from pid_trt.jobs.distributed import rank_runtime
from pid_trt.options import RuntimeOptions
from pid_trt.tiling.options import TileOptions

Pipeline = Annotated[
    Path,
    typer.Option(
        "--pipeline", help="Local diffusers pipeline folder (model_index.json).", rich_help_panel=MODEL_PANEL
    ),
]
Prompt = Annotated[
    list[str] | None,
    typer.Option(
        "--prompt",
        help="Text prompt (the LDM's, and PiD's caption); repeat it for several.",
        rich_help_panel=IO_PANEL,
    ),
]
Output = Annotated[
    Path,
    typer.Option(
        "-o",
        "--output",
        help="out.png or out.safetensors (one prompt, one capture); else a folder OUT/ of prompt folders.",
        rich_help_panel=IO_PANEL,
    ),
]
Backbone = Annotated[
    str | None,
    typer.Option(
        "--backbone",
        help=f"The LDM: {', '.join(ldm_names())} (default: from the pipeline class).",
        rich_help_panel=MODEL_PANEL,
    ),
]
Res = Annotated[
    int, typer.Option("--res", help="Output size in pixels (square); see --size.", rich_help_panel=SIZE_PANEL)
]
Size = Annotated[
    str | None,
    typer.Option("--size", help="Output WxH in pixels (instead of --res).", rich_help_panel=SIZE_PANEL),
]
CaptureStep = Annotated[
    list[int] | None,
    typer.Option(
        "--capture-step",
        help="Keep the latent after this LDM step (repeatable: one LDM run keeps each; default: upstream's, "
        "e.g. 24 of 28).",
        rich_help_panel=IO_PANEL,
    ),
]
CaptureFinal = Annotated[
    bool,
    typer.Option(
        "--capture-final",
        help="Also decode the final latent (the LDM runs all its steps).",
        rich_help_panel=IO_PANEL,
    ),
]
CompareVae = Annotated[
    bool,
    typer.Option(
        "--compare-vae",
        help="Also decode each capture with the LDM's own VAE: <capture>_vae.png, _compare.png, colour drift.",
        rich_help_panel=IO_PANEL,
    ),
]
Steps = Annotated[
    int | None,
    typer.Option(
        "--steps", help="LDM steps (default: upstream's for the backbone).", rich_help_panel=RUNTIME_PANEL
    ),
]
GuidanceScale = Annotated[
    float | None,
    typer.Option(
        "--guidance-scale", help="LDM guidance (default: upstream's).", rich_help_panel=RUNTIME_PANEL
    ),
]
Seed = Annotated[
    int,
    typer.Option(
        "--seed",
        help="Seed of the LDM's noise and of PiD's sampler (prompt i of a run: seed + i).",
        rich_help_panel=IO_PANEL,
    ),
]
SaveLatent = Annotated[
    Path | None,
    typer.Option(
        "--save-latent",
        help="Also write the PiD latent file (pidtrt decode reproduces the image).",
        rich_help_panel=IO_PANEL,
    ),
]
SaveLatents = Annotated[
    bool,
    typer.Option(
        "--save-latents",
        help="Folder runs: also write each capture's latent file beside its image.",
        rich_help_panel=IO_PANEL,
    ),
]
Pid = Annotated[
    str | None,
    typer.Option(
        "--pid",
        help=f"PiD preset when not the LDM's own (e.g. {PresetName.TINY.value}, {PresetName.SMALL.value}); "
        "see also --net-config.",
        rich_help_panel=MODEL_PANEL,
    ),
]
LdmDtype = Annotated[
    str | None,
    typer.Option(
        "--ldm-dtype",
        help="Pipeline precision: fp32, bf16 or fp16 (default: bf16 on cuda, fp32 on cpu).",
        rich_help_panel=RUNTIME_PANEL,
    ),
]


@cli_errors
@with_runtime
@with_tile_options
@with_captions
@with_output
def generate(
    prompt: Prompt = None,
    prompts_file: PromptsFile = None,
    backbone: Backbone = None,
    res: Res = 2048,
    size: Size = None,
    capture_step: CaptureStep = None,
    capture_final: CaptureFinal = False,
    compare_vae: CompareVae = False,
    steps: Steps = None,
    guidance_scale: GuidanceScale = None,
    seed: Seed = 0,
    save_latent: SaveLatent = None,
    save_latents: SaveLatents = False,
    skip_existing: SkipExisting = False,
    pid: Pid = None,
    ckpt_type: CkptType = None,
    checkpoint: Checkpoint = None,
    net_config: NetConfigFile = None,
    random_weights: RandomWeights = False,
    weights_seed: WeightsSeed = 0,
    text_encoder: TextEncoderEnv = None,
    text_dtype: TextDtype = None,
    runtime: RuntimeOptions = None,
    tiling: TileOptions = None,  # type: ignore[assignment] - PiD's tiling (cli.options.with_tile_options)
    captions: dict = None,  # type: ignore[assignment] - --null-caption, --caption-store ... (with_captions)
    ldm_dtype: LdmDtype = None,
    threads: Threads = None,
    encoding: OutputOptions = None,  # type: ignore[assignment] - --png-level, --quality ... (with_output)
    writers: Writers = None,
    *,
    pipeline: Pipeline,
    output: Output,
) -> None:
    """Generate images with a local diffusers pipeline, decoded by PiD from early latents:
    one prompt or many (--prompts-file), one capture or several of one LDM run. Under torchrun
    each process generates its share of the prompts on its own GPU (README, 'Batch jobs')."""
    from pid_trt.buckets import parse_size
    from pid_trt.integrations.diffusers import pipeline_class_name
    from pid_trt.integrations.generate_run import GenerateSettings
    from pid_trt.integrations.ldm import ldm_for_class_name, ldm_spec
    from pid_trt.jobs import generate as run
    from pid_trt.jobs.prompts import collect_prompts

    # Everything that can be checked is checked before anything loads or is written.
    world = join_world(threads)
    prompts = collect_prompts(prompt or [], [prompts_file] if prompts_file is not None else [])
    run.check_net_flags(pid, net_config, ckpt_type)
    height, width = parse_size(size) if size is not None else (res, res)
    run_options = rank_runtime(world, runtime).resolve()
    torch_dtype = run.ldm_dtype(ldm_dtype, run_options.device)
    ldm = ldm_spec(backbone) if backbone is not None else ldm_for_class_name(pipeline_class_name(pipeline))
    preset = None if net_config is not None else (pid or ldm.backbone.value)
    net = net_options(preset, ckpt_type, checkpoint, net_config, random_weights, weights_seed)
    settings = GenerateSettings.make(
        ldm, net.resolve().config, height, width, steps, capture_step or (), capture_final, seed=seed,
        guidance_scale=guidance_scale, compare_vae=compare_vae, save_latents=save_latents, tiling=tiling,
        output=encoding,
    )  # fmt: skip
    folder = run.is_folder_run(output, len(prompts), len(settings.capture_steps), save_latent, save_latents)
    models = run.Models(pipeline, torch_dtype, net, run_options, text_encoder, text_dtype, captions or {})
    front = RankConsole(world)
    if folder:
        summary, how = run.generate_folder(
            front, models, prompts, settings, output, skip=skip_existing, writers=writers
        )
        finish_run(world, summary, how, verb="generated")
    elif world.is_main:  # one image: rank 0 makes it, the other ranks have nothing to do
        typer.echo(run.generate_one(models, prompts[0], settings, output, save_latent, skip_existing, front))
