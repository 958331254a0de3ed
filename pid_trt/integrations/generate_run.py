"""Many prompts and captures through one LDM pipeline and one PiD :class:`~pid_trt.Decoder`:
the files each prompt writes, the worker that writes them, and the run manifest.

Output layout under the output folder ``OUT`` (``pidtrt generate ... -o OUT/``)::

    OUT/manifest.json                        the run manifest (JSON, written at the end)
    OUT/0000-a-red-fox/step22.png            PiD's decode of the latent after LDM step 22
    OUT/0000-a-red-fox/final.png             ... of the final latent (the run's last step)
    OUT/0000-a-red-fox/step22_vae.png        the LDM's own VAE decode, at the LDM's size
    OUT/0000-a-red-fox/step22_compare.png    that image upscaled | PiD's, labelled
    OUT/0000-a-red-fox/step22.safetensors    the PiD latent file (``pidtrt decode`` input)
    OUT/0000-a-red-fox/generation.json       the prompt's record, written after its images

One folder per prompt, ``<index>-<slug>`` (:func:`pid_trt.jobs.prompts.prompt_folder`), one
file per capture and kind; ``stepK`` is zero-padded to the step count's digits, and the
capture at the run's last step is ``final``. Prompt i of the run is generated with seed
``seed + i`` (upstream's rule), for the LDM's noise and PiD's sampler alike. The LDM runs once
per prompt whatever the number of captures (:func:`~pid_trt.integrations.diffusers.run_ldm`).
Every file is written atomically and the record last, so a prompt whose files all exist is
finished, and a rerun that skips those resumes an interrupted run. No printing here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pid_trt.atomic import remove_stale_temps
from pid_trt.errors import InputFileError
from pid_trt.integrations.colour import SPACE
from pid_trt.integrations.ldm import LdmSpec, check_decoder_fits, ldm_size, ldm_spec, resolve_capture_steps
from pid_trt.integrations.records import read_record, relative, write_json
from pid_trt.io.encoders import OutputOptions
from pid_trt.tiling.options import TileOptions

if TYPE_CHECKING:
    from pid_trt.config import NetConfig
    from pid_trt.decoder import Decoder

#: The prompt's record in its folder, and the run manifest in the output folder.
RECORD_NAME = "generation.json"
MANIFEST_NAME = "manifest.json"
#: ``format`` of the run manifest and of each record; bumped when a field changes meaning.
MANIFEST_FORMAT = "pidtrt-generate"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class GenerateSettings:
    """What every prompt of one run is generated with.

    backbone: the LDM name; height / width: PiD's output in pixels; ldm_size: (height, width)
    the LDM runs at; steps: LDM steps; capture_steps: the steps whose latents PiD decodes,
    ascending (``steps`` = the final latent); seed: prompt i uses ``seed + i``; pid_steps:
    PiD sampler steps; guidance_scale: the LDM's (None: upstream's default); compare_vae:
    also decode each capture with the LDM's VAE; save_latents: also write each PiD latent;
    tiling: PiD's :class:`~pid_trt.tiling.TileOptions` (None: the decoder's defaults, i.e.
    tiles outside the trained sizes); output: how PiD's images are encoded
    (:class:`pid_trt.io.OutputOptions`; the format by each file's suffix).
    """

    backbone: str
    height: int
    width: int
    ldm_size: tuple[int, int]
    steps: int
    capture_steps: tuple[int, ...]
    seed: int = 0
    pid_steps: int = 4
    guidance_scale: float | None = None
    compare_vae: bool = False
    save_latents: bool = False
    tiling: TileOptions | None = None
    output: OutputOptions = OutputOptions()

    @classmethod
    def make(
        cls,
        backbone: str | LdmSpec,
        config: NetConfig,
        height: int,
        width: int,
        steps: int | None = None,
        capture_steps: Sequence[int] = (),
        capture_final: bool = False,
        **options: Any,
    ) -> GenerateSettings:
        """Checked settings for a PiD net of ``config`` (a :class:`~pid_trt.config.NetConfig`)
        decoding this LDM, before anything loads: the net takes the LDM's latent, the size
        suits both, each capture step lies in 1..steps (steps None: upstream's default;
        no capture given: its recommended step). ``options``: the other fields."""
        spec = backbone if isinstance(backbone, LdmSpec) else ldm_spec(backbone)
        check_decoder_fits(config, spec)
        size = ldm_size(spec, config.pixels_per_latent, height, width)
        steps = spec.steps if steps is None else steps
        captures = resolve_capture_steps(spec, steps, capture_steps, capture_final)
        return cls(spec.name, height, width, size, steps, captures, **options)

    def label(self, step: int) -> str:
        """A capture's file stem: ``final`` for the run's last step, else ``step<K>`` with K
        zero-padded to the step count's digits (``step06`` of 28)."""
        return "final" if step == self.steps else f"step{step:0{len(str(self.steps))}d}"


@dataclass(frozen=True)
class CaptureFiles:
    """The files of one capture: PiD's image, and (None when not asked for) the VAE's
    image, the side-by-side and the latent file."""

    step: int
    label: str
    pid: Path
    vae: Path | None = None
    compare: Path | None = None
    latent: Path | None = None

    def paths(self) -> list[Path]:
        return [p for p in (self.pid, self.vae, self.compare, self.latent) if p is not None]


@dataclass(frozen=True)
class PromptOutputs:
    """One prompt of a run: its position ``index``, text, ``seed``, ``folder`` and the files
    each capture writes there, then its ``record`` (written last)."""

    index: int
    prompt: str
    seed: int
    folder: Path
    captures: tuple[CaptureFiles, ...]
    record: Path

    def paths(self) -> list[Path]:
        """Every file the prompt writes, the record last."""
        return [p for c in self.captures for p in c.paths()] + [self.record]

    def complete(self) -> bool:
        """Every file is there (each was written atomically: a finished prompt)."""
        return all(p.is_file() for p in self.paths())


def prompt_outputs(folder: Path, index: int, prompt: str, settings: GenerateSettings) -> PromptOutputs:
    """The files prompt ``index`` writes in ``folder`` (see the module's layout)."""
    captures = []
    for step in settings.capture_steps:
        label = settings.label(step)
        captures.append(
            CaptureFiles(
                step,
                label,
                folder / f"{label}.png",
                folder / f"{label}_vae.png" if settings.compare_vae else None,
                folder / f"{label}_compare.png" if settings.compare_vae else None,
                folder / f"{label}.safetensors" if settings.save_latents else None,
            )
        )
    return PromptOutputs(index, prompt, settings.seed + index, folder, tuple(captures), folder / RECORD_NAME)


def generate_prompt(
    pipe: Any,
    decoder: Decoder,
    outputs: PromptOutputs,
    settings: GenerateSettings,
    vae: Any = None,
    pipe_kwargs: Mapping[str, Any] | None = None,
    writer: Any = None,
) -> dict[str, Any]:
    """Generate one prompt: the LDM once (stopping after the last capture), PiD on each
    capture, the VAE too when ``settings.compare_vae`` (``vae``: the LDM's, e.g. ``pipe.vae``),
    each file written atomically, the record last (temp files a killed run left in the
    prompt's folder are removed first, when their writer is gone). Returns the record (see
    :func:`write_run_manifest`). ``pipe_kwargs``: extra pipeline arguments (e.g.
    ``prompt_embeds``). ``writer``: a :class:`pid_trt.io.writer.ImageWriter` that encodes and
    writes PiD's images while the next capture decodes (the record still comes last)."""
    from pid_trt.integrations.diffusers import pid_caption

    if settings.compare_vae and vae is None:
        raise InputFileError("compare_vae needs the LDM's VAE (vae=pipe.vae)")
    begin = time.perf_counter()
    run = _run_ldm(pipe, decoder, outputs, settings, pipe_kwargs)
    chosen = pid_caption(decoder, outputs.prompt, 1, outputs.seed)
    caption = None if chosen.source == "random stand-in" else chosen.embedding
    outputs.folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(outputs.folder, lambda name: True, time.time())  # the folder is this prompt's alone
    files = {c.step: c for c in outputs.captures}
    done = [
        _decode_capture(decoder, cap, files[cap.step], caption, outputs, settings, vae, writer)
        for cap in run.captures
    ]
    captures = [entry for entry, _ in done]
    for _, pending in done:  # every image lands (or its error is raised) before the record
        if pending is not None:
            pending.result()
    record = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "index": outputs.index,
        "prompt": outputs.prompt,
        "seed": outputs.seed,
        "folder": outputs.folder.name,
        "caption": chosen.source,
        "ldm": {
            "backbone": run.backbone,
            "steps": run.steps,
            "size": [run.ldm_size[1], run.ldm_size[0]],
            "seconds": round(run.seconds, 4),
        },
        "size": [settings.width, settings.height],
        "captures": captures,
        "seconds": round(time.perf_counter() - begin, 4),
    }
    write_json(outputs.record, record)
    return record


def _run_ldm(
    pipe: Any,
    decoder: Decoder,
    outputs: PromptOutputs,
    settings: GenerateSettings,
    pipe_kwargs: Mapping[str, Any] | None,
) -> Any:
    """The prompt's one LDM run, keeping the latent of each capture step
    (:func:`pid_trt.integrations.diffusers.run_ldm`)."""
    from pid_trt.integrations.diffusers import run_ldm

    extra = dict(pipe_kwargs or {})
    if settings.guidance_scale is not None:
        extra.setdefault("guidance_scale", settings.guidance_scale)
    return run_ldm(
        pipe, outputs.prompt, settings.height, settings.width, settings.capture_steps, outputs.seed,
        pixels_per_latent=decoder.config.pixels_per_latent, backbone=settings.backbone,
        num_inference_steps=settings.steps, **extra,
    )  # fmt: skip


def generate_provenance(
    decoder: Decoder, prompt: str, seed: int, height: int, width: int, sigmas: list[float],
    tiling: TileOptions | None, pid_steps: int, ldm: Mapping[str, Any],
) -> Any:  # fmt: skip
    """The :class:`~pid_trt.io.provenance.Provenance` of one ``pidtrt generate`` image: PiD's
    decode of the prompt's capture, with the LDM's side in ``extra``."""
    from pid_trt.io.provenance import for_decode, tiles_text

    size_plan = decoder.plan(height, width, len(sigmas), pid_steps, tiling=tiling)
    return for_decode(
        decoder.spec, decoder.backend_name, decoder.precision, decoder.device, seed=seed, steps=pid_steps,
        height=height, width=width, degrade_sigma=sigmas, tiles=tiles_text(size_plan), caption="prompt",
        prompt=(prompt,), extra=ldm,
    )  # fmt: skip


def _decode_capture(
    decoder: Decoder,
    cap: Any,
    target: CaptureFiles,
    caption: Any,
    outputs: PromptOutputs,
    settings: GenerateSettings,
    vae: Any,
    writer: Any = None,
) -> tuple[dict[str, Any], Any]:
    """One capture: PiD's image, the latent file and the VAE's images when asked for, each
    written (PiD's by ``writer`` when given: its future is returned beside the capture's
    entry of the record, else None)."""
    import torch

    from pid_trt.io import output_format, write_images
    from pid_trt.io.images import pooled_output

    root = outputs.folder.parent
    start = time.perf_counter()
    pooled = writer is not None and vae is None  # the VAE comparison needs the float image
    fmt = output_format(target.pid)
    dtype, on_device = (
        pooled_output(fmt, settings.output, decoder.device) if pooled else (torch.float32, False)
    )
    image = decoder.decode(
        cap.latent, caption, degrade_sigma=cap.sigma, seed=outputs.seed,
        size=(settings.height, settings.width), steps=settings.pid_steps, tiling=settings.tiling,
        output_dtype=dtype, keep_on_device=on_device,
    )  # fmt: skip
    pid_seconds = time.perf_counter() - start
    made = generate_provenance(
        decoder, outputs.prompt, outputs.seed, settings.height, settings.width, [cap.sigma], settings.tiling,
        settings.pid_steps, {"ldm": settings.backbone, "ldm_steps": settings.steps, "capture_step": cap.step},
    )  # fmt: skip
    pending = writer.submit(image, target.pid, settings.output, text=made.to_text()) if pooled else None
    if not pooled:
        write_images(image, target.pid, settings.output, text=made.to_text())
    entry: dict[str, Any] = {
        "step": cap.step,
        "label": target.label,
        "degrade_sigma": round(cap.sigma, 6),
        "files": {"pid": relative(target.pid, root)},
        "seconds": {"pid": round(pid_seconds, 4)},
    }
    if target.latent is not None:
        _write_capture_latent(target.latent, cap, caption, settings.backbone)
        entry["files"]["latent"] = relative(target.latent, root)
    if target.vae is not None and target.compare is not None:
        from pid_trt.integrations.vae_compare import compare_with_vae, write_comparison

        start = time.perf_counter()
        cmp = compare_with_vae(vae, cap.latent, settings.backbone, image)
        entry["seconds"]["vae"] = round(time.perf_counter() - start, 4)
        write_comparison(cmp, target.vae, target.compare)
        entry["files"].update(vae=relative(target.vae, root), compare=relative(target.compare, root))
        entry["vae_size"] = [int(cmp.vae_image.shape[-1]), int(cmp.vae_image.shape[-2])]
        entry["colour_drift"] = cmp.drift.as_dict()
    return entry, pending


def _write_capture_latent(path: Path, cap: Any, caption: Any, ldm: str) -> None:
    """A capture's PiD latent file (``pidtrt decode`` input): latent, caption, its sigma, the backbone."""
    import torch

    from pid_trt.io import write_latent_file

    sigma = torch.tensor([cap.sigma], dtype=torch.float32)
    write_latent_file(path, cap.latent.cpu(), caption, sigma, backbone=ldm_spec(ldm).backbone.value)


@dataclass(frozen=True)
class RunInfo:
    """What the run manifest says about the run beyond the settings: the pipeline folder and
    its precision, the PiD net (preset or net-config name, checkpoint, random weights), the
    backend, its precision and device, and the seconds spent loading the models."""

    pipeline: str
    ldm_dtype: str
    pid: str
    checkpoint: str | None
    random_weights: bool
    backend: str
    precision: str
    device: str
    load_seconds: float = 0.0


def write_run_manifest(
    path: Path,
    outputs: Sequence[PromptOutputs],
    settings: GenerateSettings,
    info: RunInfo,
    outcomes: Mapping[int, tuple[str, str | None]] | None = None,
    run_seconds: float = 0.0,
) -> dict[str, Any]:
    """Write the run manifest (JSON, atomically) to ``path`` and return it: the run (see
    :class:`RunInfo`, the settings, the timings) and one entry per prompt: its record as
    written (from this run or, skipped, an earlier one) with ``status`` ``done`` /
    ``skipped``, or ``{index, prompt, seed, folder, status: failed, error}`` / ``missing``
    (not run: interrupted, or another process's share). ``outcomes``: this run's
    ``index -> (status, error message)``; ``run_seconds``: the run's wall time."""
    outcomes = outcomes or {}
    entries = []
    for out in outputs:
        status, error = outcomes.get(out.index, (None, None))
        record = read_record(out.record) if status != "failed" else None
        if record is not None:
            entry = {"status": status or "done", **record}
        else:
            entry = {
                "index": out.index, "prompt": out.prompt, "seed": out.seed, "folder": out.folder.name,
                "status": status or "missing",
            }  # fmt: skip
            if error:
                entry["error"] = error
        entries.append(entry)
    counts = {s: sum(e["status"] == s for e in entries) for s in ("done", "skipped", "failed", "missing")}

    def total(key: str) -> float:
        return round(
            sum(c.get("seconds", {}).get(key, 0.0) for e in entries for c in e.get("captures", [])), 4
        )

    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "pipeline": info.pipeline,
        "ldm": settings.backbone,
        "ldm_dtype": info.ldm_dtype,
        "pid": {"net": info.pid, "checkpoint": info.checkpoint, "random_weights": info.random_weights},
        "backend": info.backend,
        "precision": info.precision,
        "device": info.device,
        "size": [settings.width, settings.height],
        "ldm_size": [settings.ldm_size[1], settings.ldm_size[0]],
        "steps": settings.steps,
        "pid_steps": settings.pid_steps,
        "guidance_scale": settings.guidance_scale,
        "captures": [{"step": k, "label": settings.label(k)} for k in settings.capture_steps],
        "seed": settings.seed,
        "seed_rule": "prompt i uses seed + i (the LDM's noise and PiD's sampler)",
        "compare_vae": settings.compare_vae,
        "tiling": settings.tiling.record() if settings.tiling is not None else None,
        "colour_space": SPACE if settings.compare_vae else None,
        "counts": {"prompts": len(entries), **counts},
        "timings": {
            "load_s": round(info.load_seconds, 4),
            "run_s": round(run_seconds, 4),
            "ldm_s": round(sum(e.get("ldm", {}).get("seconds", 0.0) for e in entries), 4),
            "pid_s": total("pid"),
            "vae_s": total("vae"),
        },
        "prompts": entries,
    }
    write_json(path, manifest)
    return manifest
