"""``pidtrt generate``'s runs: prompts through a local diffusers pipeline, early latents
decoded by PiD. One prompt and one capture into ``-o FILE`` (:func:`generate_one`), or every
prompt into its folder under ``-o DIR/`` (:func:`generate_folder`: a progress display, the run
manifest; under torchrun each rank its share of the prompts). The files each prompt writes
and the worker are :mod:`pid_trt.integrations.generate_run`'s; the front end
(:class:`~pid_trt.jobs.frontend.FrontEnd`) shows progress and warnings; nothing here prints."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pid_trt.errors import ConfigError
from pid_trt.jobs.distributed import RankGroup
from pid_trt.jobs.frontend import FrontEnd
from pid_trt.jobs.outputs import Job, is_dir_target, shard
from pid_trt.jobs.summary import Summary

if TYPE_CHECKING:
    from pid_trt.decoder import Decoder
    from pid_trt.integrations.generate_run import GenerateSettings, PromptOutputs, RunInfo
    from pid_trt.options import NetOptions, Runtime

LDM_DTYPES = ("fp32", "bf16", "fp16")


def ldm_dtype(text: str | None, device: str) -> Any:
    """``--ldm-dtype`` fp32 | bf16 | fp16 as a torch dtype (None: bf16 on cuda, fp32 on cpu)."""
    import torch

    if text is None:
        text = "bf16" if device.startswith("cuda") else "fp32"
    if text not in LDM_DTYPES:
        raise ConfigError(f"--ldm-dtype {text!r}: expected fp32, bf16 or fp16")
    return getattr(torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[text])


def check_net_flags(pid: str | None, net_config: Path | None, ckpt_type: str | None) -> None:
    """``--pid``, ``--net-config`` and ``--ckpt-type`` together: one-line ConfigError where they clash."""
    if pid is not None and net_config is not None:
        raise ConfigError("--pid and --net-config exclude each other: a preset fixes the net config")
    if net_config is not None and ckpt_type is not None:
        raise ConfigError("--ckpt-type needs a preset (--pid or the backbone's), not --net-config")


def is_folder_run(
    output: Path, n_prompts: int, n_captures: int, save_latent: Path | None, save_latents: bool
) -> bool:
    """Whether the run writes a folder (-o DIR/, or several images); ConfigError for -o and
    latent flags that do not fit."""
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


@dataclass(frozen=True)
class Models:
    """The models of one run, loaded on demand (:meth:`load`): the pipeline, then PiD's Decoder.
    ``captions``: :meth:`pid_trt.Decoder.load`'s caption keywords."""

    pipeline: Path
    torch_dtype: Any
    net: NetOptions
    runtime: Runtime
    text_encoder: str | None = None
    text_dtype: str | None = None
    captions: dict[str, Any] = field(default_factory=dict)

    def load(self) -> tuple[Any, Decoder]:
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
        return pipe, dec

    def info(self, dec: Decoder | None, load_seconds: float) -> RunInfo:
        """The run manifest's facts of these models (``dec`` None: no prompt was left to run)."""
        from pid_trt.integrations.generate_run import RunInfo

        net, runtime = self.net, self.runtime
        return RunInfo(
            str(self.pipeline), str(self.torch_dtype).removeprefix("torch."),
            net.backbone or (str(net.net_config) if net.net_config else "?"),
            str(net.checkpoint) if net.checkpoint else None, net.random_weights,
            dec.backend_name if dec else runtime.name, dec.precision if dec else runtime.precision.value,
            dec.device if dec else runtime.device, load_seconds,
        )  # fmt: skip


#: The warning of a run with ``--random-weights``.
RANDOM_WEIGHTS_WARNING = "--random-weights: the PiD network is randomly initialised; the image means nothing"


def generate_one(
    models: Models, prompt: str, settings: GenerateSettings, output: Path, save_latent: Path | None,
    skip: bool, front: FrontEnd,
) -> str:  # fmt: skip
    """One prompt, one capture, ``-o FILE``: the image (and ``save_latent``, the VAE's
    ``<stem>_vae.png`` / ``<stem>_compare.png`` with ``settings.compare_vae``); returns the
    run's one line ("skipped ..." when ``skip`` and every file exists)."""
    from pid_trt.integrations.diffusers import generate
    from pid_trt.integrations.generate_run import generate_provenance
    from pid_trt.io import write_images

    extras = [output.with_name(f"{output.stem}_{k}.png") for k in ("vae", "compare")]
    wanted = [output] + (extras if settings.compare_vae else []) + ([save_latent] if save_latent else [])
    if skip and all(p.is_file() for p in wanted):
        return f"skipped {output} (exists)"
    start = time.perf_counter()
    pipe, dec = models.load()
    if models.net.random_weights:
        front.warn(RANDOM_WEIGHTS_WARNING)
    ldm = settings.backbone
    with dec:
        extra: dict[str, Any] = (
            {"guidance_scale": settings.guidance_scale} if settings.guidance_scale is not None else {}
        )
        result = generate(
            pipe, dec, prompt, settings.height, settings.width, settings.capture_steps[0], settings.seed,
            backbone=ldm, num_inference_steps=settings.steps, tiling=settings.tiling, **extra,
        )  # fmt: skip
        made = generate_provenance(
            dec, prompt, settings.seed, settings.height, settings.width, [result.degrade_sigma],
            settings.tiling, 4, {"ldm": ldm, "ldm_steps": result.steps, "capture_step": result.step},
        )  # fmt: skip
    written = write_images(result.image, output, settings.output, text=made.to_text())
    drift_note = _compare(pipe, result, ldm, extras, written) if settings.compare_vae else ""
    if save_latent is not None:
        _save_latent(save_latent, result, ldm)
    latent_note = f"; latent -> {save_latent}" if save_latent is not None else ""
    return (
        f"wrote {', '.join(str(p) for p in written)} ({settings.width}x{settings.height}; {result.backbone} at "
        f"{result.ldm_size[1]}x{result.ldm_size[0]}, latent after step {result.step} of {result.steps}, "
        f"degrade_sigma {result.degrade_sigma:.4f}, caption: {result.caption_source}{latent_note}{drift_note}) "
        f"in {time.perf_counter() - start:.2f} s"
    )


def _compare(pipe: Any, result: Any, ldm: str, extras: list[Path], written: list[Path]) -> str:
    """The LDM's own VAE decode beside PiD's image (``extras``: its image and the side-by-side,
    appended to ``written``); returns the drift note of the run's line."""
    from pid_trt.integrations.vae_compare import compare_with_vae, write_comparison

    cmp = compare_with_vae(pipe.vae, result.latent, ldm, result.image)
    written += write_comparison(cmp, *extras)
    d = cmp.drift
    return (
        f"; PiD vs VAE: chroma {d.mean_chroma_shift:+.2f}, green-magenta {d.green_magenta_bias:+.2f}, "
        f"delta E {d.mean_delta_e:.2f} (CIELAB)"
    )


def _save_latent(path: Path, result: Any, ldm: str) -> None:
    """``--save-latent``: the captured latent as a PiD latent file (``pidtrt decode`` input)."""
    import torch

    from pid_trt.integrations.ldm import ldm_spec
    from pid_trt.io import write_latent_file

    sigma = torch.tensor([result.degrade_sigma], dtype=torch.float32)
    write_latent_file(path, result.latent, result.caption, sigma, backbone=ldm_spec(ldm).backbone.value)


def generate_folder(
    front: FrontEnd, models: Models, prompts: list[str], settings: GenerateSettings, root: Path, *,
    skip: bool = False, writers: int | None = None,
) -> tuple[Summary, str]:  # fmt: skip
    """Every prompt into its folder under ``root`` (:mod:`pid_trt.integrations.generate_run`),
    the run manifest (rank 0, of the whole run); returns the whole run's summary and how it ran.
    Under torchrun each rank generates its shard of the prompts."""
    from pid_trt.integrations.generate_run import MANIFEST_NAME, prompt_outputs, write_run_manifest
    from pid_trt.jobs.prompts import prompt_folder

    world = front.world
    outs = [
        prompt_outputs(root / prompt_folder(i, p, len(prompts)), i, p, settings)
        for i, p in enumerate(prompts)
    ]
    jobs = [Job(o.prompt, o.record, o.index) for o in outs]
    with RankGroup(world) as group:
        start = time.perf_counter()
        mine = [outs[job.index] for job in shard(jobs, world.rank, world.world_size)]
        pipe = dec = None
        if any(not (skip and o.complete()) for o in mine):
            pipe, dec = models.load()
            if models.net.random_weights and world.is_main:
                front.warn(RANDOM_WEIGHTS_WARNING)
        info = models.info(dec, time.perf_counter() - start)
        root.mkdir(parents=True, exist_ok=True)
        summary = _run_prompts(front, outs, jobs, settings, pipe, dec, skip, writers)
        summary = group.gather(summary, front.describe)
    outcomes = {
        r.job.index: (r.outcome.value, front.describe(r)[0] if r.error is not None else None)
        for r in summary.results
        if r.job is not None
    }
    manifest = root / MANIFEST_NAME
    if world.is_main:
        write_run_manifest(manifest, outs, settings, info, outcomes, summary.seconds)
    n = len(settings.capture_steps)
    return (
        summary,
        f"{settings.backbone}, {n} capture{'s' * (n != 1)} a prompt from one LDM run; manifest {manifest}",
    )


def _run_prompts(
    front: FrontEnd, outs: list[PromptOutputs], jobs: list[Job], settings: GenerateSettings, pipe: Any,
    dec: Decoder | None, skip: bool, writers: int | None,
) -> Summary:  # fmt: skip
    """This rank's prompts through ``pipe`` and ``dec`` (closed at the end), PiD's images
    written by ``writers`` threads while the next prompt runs."""
    from pid_trt.integrations.generate_run import generate_prompt
    from pid_trt.io.writer import ImageWriter, default_writers

    world = front.world
    share = world.local_world_size if world.distributed else 1
    writer = ImageWriter(default_writers(share) if writers is None else writers)

    def work(job: Job) -> None:
        assert dec is not None  # loaded whenever a prompt of this rank is left to run
        vae = pipe.vae if settings.compare_vae else None
        generate_prompt(pipe, dec, outs[job.index], settings, vae=vae, writer=writer)

    try:
        return front.run(
            "generate", jobs, work, skip_existing=skip, exists=lambda job: outs[job.index].complete()
        )
    finally:
        writer.close()
        if dec is not None:
            dec.close()
