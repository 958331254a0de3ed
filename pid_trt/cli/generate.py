"""``pidtrt generate``: prompt -> local diffusers pipeline -> early capture -> PiD -> image."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from pid_trt.cli.errors import cli_errors, warn
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
    with_tiling,
)
from pid_trt.cli.outputs import Writers, with_output
from pid_trt.cli.panels import CAPTIONS_PANEL, IO_PANEL, MANY_PANEL, MODEL_PANEL, RUNTIME_PANEL, SIZE_PANEL
from pid_trt.cli.ranks import Threads, join_world
from pid_trt.errors import ConfigError
from pid_trt.io.encoders import OutputOptions
from pid_trt.jobs.distributed import World, rank_runtime
from pid_trt.options import RuntimeOptions


def _dtype(text: str | None, device: str):
    import torch

    if text is None:
        text = "bf16" if device.startswith("cuda") else "fp32"
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if text not in table:
        raise ConfigError(f"--ldm-dtype {text!r}: expected fp32, bf16 or fp16")
    return table[text]


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
PromptsFile = Annotated[
    Path | None,
    typer.Option(
        "--prompts-file",
        help="Text file, one prompt a line (blank lines skipped); after --prompt.",
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
        help="The LDM: flux, flux2, flux2_klein, sd3, sdxl, qwenimage, zimage, zimage_turbo "
        "(default: from the pipeline class).",
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
SkipExisting = Annotated[
    bool,
    typer.Option(
        "--skip-existing",
        help="Skip prompts whose files all exist (resume an interrupted run).",
        rich_help_panel=MANY_PANEL,
    ),
]
Pid = Annotated[
    str | None,
    typer.Option(
        "--pid",
        help="PiD preset when not the LDM's own (e.g. tiny, small); see also --net-config.",
        rich_help_panel=MODEL_PANEL,
    ),
]
TextEncoder = Annotated[
    str | None,
    typer.Option(
        "--text-encoder",
        envvar="PIDTRT_TEXT_ENCODER",
        show_envvar=True,
        help="Local Gemma-2-2B-it directory for PiD's caption.",
        rich_help_panel=CAPTIONS_PANEL,
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
@with_tiling
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
    text_encoder: TextEncoder = None,
    text_dtype: TextDtype = None,
    runtime: RuntimeOptions = None,
    tiling: dict = None,  # type: ignore[assignment] - PiD's tiling keywords (cli.options.with_tiling)
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
    from pid_trt.jobs.prompts import collect_prompts

    # Everything that can be checked is checked before anything loads or is written.
    world = join_world(threads)
    prompts = collect_prompts(prompt or [], [prompts_file] if prompts_file is not None else [])
    _check_net_flags(pid, net_config, ckpt_type)
    height, width = parse_size(size) if size is not None else (res, res)
    run_options = rank_runtime(world, runtime.resolved())
    torch_dtype = _dtype(ldm_dtype, run_options.device)
    ldm = ldm_spec(backbone) if backbone is not None else ldm_for_class_name(pipeline_class_name(pipeline))
    preset = None if net_config is not None else (pid or ldm.backbone.value)
    net = net_options(preset, ckpt_type, checkpoint, net_config, random_weights, weights_seed)
    settings = GenerateSettings.make(
        ldm, net.resolve().config, height, width, steps, capture_step or (), capture_final, seed=seed,
        guidance_scale=guidance_scale, compare_vae=compare_vae, save_latents=save_latents, tiling=tiling,
        output=encoding,
    )  # fmt: skip
    folder = _is_folder_run(output, len(prompts), len(settings.capture_steps), save_latent, save_latents)
    warn_random = random_weights and world.is_main  # under torchrun, rank 0 alone warns
    run = _Run(pipeline, torch_dtype, net, run_options, text_encoder, text_dtype, warn_random, captions)
    if folder:
        _folder_run(world, run, prompts, settings, output, skip_existing, writers)
    elif world.is_main:  # one image: rank 0 makes it, the other ranks have nothing to do
        _one_image(run, prompts[0], settings, output, save_latent, skip_existing)


def _check_net_flags(pid: str | None, net_config: Path | None, ckpt_type: str | None) -> None:
    if pid is not None and net_config is not None:
        raise ConfigError("--pid and --net-config exclude each other: a preset fixes the net config")
    if net_config is not None and ckpt_type is not None:
        raise ConfigError("--ckpt-type needs a preset (--pid or the backbone's), not --net-config")


def _is_folder_run(
    output: Path, n_prompts: int, n_captures: int, save_latent: Path | None, save_latents: bool
) -> bool:
    """Whether the run writes a folder (-o DIR/, or several images); ConfigError for -o and
    latent flags that do not fit."""
    from pid_trt.jobs import is_dir_target

    n_images = n_prompts * n_captures
    folder = is_dir_target(output) or n_images > 1
    if folder and not is_dir_target(output):
        raise ConfigError(
            f"-o {output} names one file, but {n_prompts} prompt(s) x {n_captures} "
            f"capture(s) make {n_images} images: pass a folder (-o {output.with_suffix('')}/)"
        )
    if folder and save_latent is not None:
        raise ConfigError("--save-latent FILE is for one image (-o FILE); a folder run takes --save-latents")
    if not folder and save_latents:
        raise ConfigError(
            "--save-latents is for a folder run (-o DIR/); with -o FILE pass --save-latent FILE"
        )
    if not folder and output.suffix.lower() not in (".png", ".safetensors"):
        raise ConfigError(f"-o {output}: expected out.png, out.safetensors or a folder (-o {output}/)")
    return folder


class _Run:
    """The models of one command, loaded on demand: the pipeline, then PiD's Decoder."""

    def __init__(
        self, pipeline, torch_dtype, net, runtime, text_encoder, text_dtype, random_weights, captions
    ):
        self.pipeline, self.torch_dtype, self.net, self.runtime = pipeline, torch_dtype, net, runtime
        self.text_encoder, self.text_dtype, self.random_weights = text_encoder, text_dtype, random_weights
        self.captions = captions or {}

    def load(self):
        """(pipeline, Decoder); the Decoder is a context manager the caller closes."""
        from pid_trt import Decoder
        from pid_trt.integrations.diffusers import load_pipeline, quiet_hf_logs

        quiet_hf_logs()
        pipe = load_pipeline(self.pipeline, self.runtime.device, self.torch_dtype)
        dec = Decoder.from_options(
            self.net,
            self.runtime,
            text_encoder=self.text_encoder,
            text_dtype=self.text_dtype,
            **self.captions,
        )
        if self.random_weights:
            warn("--random-weights: the PiD network is randomly initialised; the image means nothing")
        return pipe, dec


def _one_image(run: _Run, prompt: str, settings, output: Path, save_latent: Path | None, skip: bool) -> None:
    """One prompt, one capture, ``-o FILE``: the image (and --save-latent, --compare-vae's
    ``<stem>_vae.png`` / ``<stem>_compare.png``), one line on stdout."""
    import torch

    from pid_trt.integrations.diffusers import generate as run_generate
    from pid_trt.integrations.generate_run import generate_provenance
    from pid_trt.io import write_images, write_latent_file

    extras = [output.with_name(f"{output.stem}_{k}.png") for k in ("vae", "compare")]
    wanted = [output] + (extras if settings.compare_vae else []) + ([save_latent] if save_latent else [])
    if skip and all(p.is_file() for p in wanted):
        typer.echo(f"skipped {output} (exists)")
        return
    start = time.perf_counter()
    pipe, dec = run.load()
    ldm = settings.backbone
    with dec:
        extra = {"guidance_scale": settings.guidance_scale} if settings.guidance_scale is not None else {}
        result = run_generate(
            pipe, dec, prompt, settings.height, settings.width, settings.capture_steps[0], settings.seed,
            backbone=ldm, num_inference_steps=settings.steps, tiling=settings.tiling, **extra,
        )  # fmt: skip
        made = generate_provenance(
            dec, prompt, settings.seed, settings.height, settings.width, [result.degrade_sigma],
            settings.tiling or {}, 4, {"ldm": ldm, "ldm_steps": result.steps, "capture_step": result.step},
        )  # fmt: skip
    written = write_images(result.image, output, settings.output, text=made.to_text())
    drift_note = ""
    if settings.compare_vae:
        from pid_trt.integrations.vae_compare import compare_with_vae, write_comparison

        cmp = compare_with_vae(pipe.vae, result.latent, ldm, result.image)
        written += write_comparison(cmp, *extras)
        d = cmp.drift
        drift_note = (
            f"; PiD vs VAE: chroma {d.mean_chroma_shift:+.2f}, green-magenta {d.green_magenta_bias:+.2f}, "
            f"delta E {d.mean_delta_e:.2f} (CIELAB)"
        )
    if save_latent is not None:
        from pid_trt.integrations.ldm import ldm_spec

        sigma = torch.tensor([result.degrade_sigma], dtype=torch.float32)
        write_latent_file(
            save_latent, result.latent, result.caption, sigma, backbone=ldm_spec(ldm).backbone.value
        )
    names = ", ".join(str(p) for p in written)
    latent_note = f"; latent -> {save_latent}" if save_latent is not None else ""
    typer.echo(
        f"wrote {names} ({settings.width}x{settings.height}; {result.backbone} at {result.ldm_size[1]}x"
        f"{result.ldm_size[0]}, latent after step {result.step} of {result.steps}, degrade_sigma "
        f"{result.degrade_sigma:.4f}, caption: {result.caption_source}{latent_note}{drift_note}) in "
        f"{time.perf_counter() - start:.2f} s"
    )


def _folder_run(
    world: World, run: _Run, prompts: list[str], settings, root: Path, skip: bool, writers: int | None
) -> None:
    """Every prompt into its folder under ``root`` (:mod:`pid_trt.integrations.generate_run`),
    a progress bar over prompts, the run manifest, a summary line. Under torchrun each rank
    generates its shard of the prompts; rank 0 writes the manifest of the whole run."""
    from pid_trt.cli.errors import one_line
    from pid_trt.cli.ranks import finish_run, gather_run, run_rank
    from pid_trt.integrations.generate_run import (
        MANIFEST_NAME,
        RunInfo,
        generate_prompt,
        prompt_outputs,
        write_run_manifest,
    )
    from pid_trt.io.writer import ImageWriter, default_writers
    from pid_trt.jobs import Job, shard
    from pid_trt.jobs.distributed import RankGroup
    from pid_trt.jobs.prompts import prompt_folder

    outs = [
        prompt_outputs(root / prompt_folder(i, p, len(prompts)), i, p, settings)
        for i, p in enumerate(prompts)
    ]
    jobs = [Job(o.prompt, o.record, o.index) for o in outs]
    with RankGroup(world) as group:
        start = time.perf_counter()
        mine = [outs[job.index] for job in shard(jobs, world.rank, world.world_size)]
        pending = [o for o in mine if not (skip and o.complete())]
        pipe = dec = None
        if pending:
            pipe, dec = run.load()
        net = run.net
        info = RunInfo(
            str(run.pipeline), str(run.torch_dtype).removeprefix("torch."),
            net.backbone or (str(net.net_config) if net.net_config else "?"),
            str(net.checkpoint) if net.checkpoint else None, net.random_weights,
            dec.backend_name if dec else run.runtime.backend, str(dec.precision if dec else run.runtime.precision),
            dec.device if dec else str(run.runtime.device), time.perf_counter() - start,
        )  # fmt: skip
        root.mkdir(parents=True, exist_ok=True)

        share = world.local_world_size if world.distributed else 1
        writer = ImageWriter(default_writers(share) if writers is None else writers)

        def work(job: Job) -> None:
            vae = pipe.vae if settings.compare_vae else None
            generate_prompt(pipe, dec, outs[job.index], settings, vae=vae, writer=writer)

        try:
            summary = run_rank(
                world,
                "generate",
                jobs,
                work,
                skip_existing=skip,
                exists=lambda job: outs[job.index].complete(),
            )
        finally:
            writer.close()
            if dec is not None:
                dec.close()
        summary = gather_run(group, summary)
    outcomes = {
        r.job.index: (r.outcome.value, one_line(r.error) if r.error is not None else None)
        for r in summary.results
        if r.job is not None
    }
    manifest = root / MANIFEST_NAME
    if world.is_main:
        write_run_manifest(manifest, outs, settings, info, outcomes, summary.seconds)
    n = len(settings.capture_steps)
    how = f"{settings.backbone}, {n} capture{'s' * (n != 1)} a prompt from one LDM run; manifest {manifest}"
    finish_run(world, summary, how, verb="generated")
