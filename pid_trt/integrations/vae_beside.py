"""The LDM's own VAE beside PiD on latent files (``pidtrt decode LATENT ... --compare-vae --vae DIR``).

A latent file holds the *normalised* PiD latent [B, C, h, w] (the design's latent-file
contract: what the LDM pipeline returns, unpacked). Its VAE input is the inverse of the LDM's
normalisation (:func:`pid_trt.integrations.vae.pid_to_vae`): flux z / 0.3611 + 0.1159, sd3
z / 1.5305 + 0.0609, sdxl z / 0.13025, zimage z / scaling_factor + shift_factor of the VAE's
config, flux2 the VAE's BatchNorm statistics undone then the 2x2 unpatchify to 32 channels,
qwenimage z * latents_std + latents_mean with a time axis. A noisy latent (degrade_sigma > 0,
an early capture) is decoded as it is, as upstream's baseline does.

Which LDM's space: the latent file's ``backbone`` metadata (``pidtrt generate`` writes it),
else the PiD net's preset backbone. Refused in one line, before PiD runs: neither known, a
backbone without a VAE (dinov2 / siglip: representation encoders), a VAE whose latent
channels are not the latent's.

Files beside PiD's output ``out.png`` (:func:`beside_paths`): ``out_vae.png`` (the VAE's
image at the LDM's size), ``out_compare.png`` (that image upscaled | PiD's, labelled;
:mod:`pid_trt.integrations.vae_compare`) and ``out_compare.json`` (the record: files, sizes,
the colour drift, seconds), written last: a file whose record exists is finished. A run over
many files also gets a run manifest (:func:`write_decode_manifest`). No printing here.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pid_trt.config import Backbone
from pid_trt.errors import ConfigError
from pid_trt.integrations.colour import SPACE
from pid_trt.integrations.ldm import LdmSpec, ldm_spec
from pid_trt.integrations.records import read_record, relative, write_json

if TYPE_CHECKING:
    from pid_trt.decoder import Decoder
    from pid_trt.options import NetOptions, RuntimeOptions

#: ``format`` of each file's record and of the run manifest.
RECORD_FORMAT = "pidtrt-decode-compare-vae"
RECORD_VERSION = 1
#: The run manifest of a many-file run, in the outputs' common folder.
MANIFEST_NAME = "compare_vae.json"
_NO_VAE = (Backbone.DINOV2.value, Backbone.SIGLIP.value)


@dataclass(frozen=True)
class BesidePaths:
    """The files written beside PiD's output: the VAE's image, the side-by-side, the record
    (PNG names get ``_k`` per image of a batch, as :func:`pid_trt.io.write_images`)."""

    vae: Path
    compare: Path
    record: Path


def beside_paths(output: str | os.PathLike[str]) -> BesidePaths:
    """``out.png`` (or ``out.safetensors``) -> ``out_vae.png``, ``out_compare.png``, ``out_compare.json``."""
    out = Path(output)
    return BesidePaths(
        *(out.with_name(f"{out.stem}{end}") for end in ("_vae.png", "_compare.png", "_compare.json"))
    )


@dataclass(frozen=True)
class Checked:
    """A latent file accepted for the comparison: its LDM and the loaded VAE."""

    ldm: LdmSpec
    vae: Any


class VaeBeside:
    """The LDM's VAE from a local folder (``--vae DIR``), decoding each latent file beside PiD.

    ``net_backbone``: the PiD net's preset backbone (None for a net config; tiny / small
    count as none), the LDM of a latent file without ``backbone`` metadata; ``device`` / ``dtype``: where and in what
    precision the VAE runs (float32 by default). The VAE is loaded once per VAE class, at
    once when the LDM is known from the net (so a bad folder is refused before anything
    runs), else at the first file. Thread-safe."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        net_backbone: str | None = None,
        device: str = "cpu",
        dtype: Any = None,
    ) -> None:
        self.directory = Path(directory)
        self.device, self.dtype = device, dtype
        known = net_backbone is not None and (net_backbone in _NO_VAE or _is_ldm(net_backbone))
        self.net_backbone = net_backbone if known else None  # tiny / small: stand-ins of no LDM
        self._vaes: dict[str, Any] = {}
        self._lock = threading.Lock()
        if net_backbone is not None and net_backbone in _NO_VAE:
            raise ConfigError(_no_vae(net_backbone, "the PiD net"))
        if net_backbone is not None and _is_ldm(net_backbone):
            self.check_channels(
                self.vae_for(ldm_spec(net_backbone)), ldm_spec(net_backbone), None, "the PiD net takes"
            )

    def vae_for(self, ldm: LdmSpec) -> Any:
        """The VAE loaded as ``ldm``'s diffusers class (cached)."""
        from pid_trt.integrations.diffusers import quiet_hf_logs
        from pid_trt.integrations.vae import load_vae, vae_class_name

        name = vae_class_name(ldm.name)
        with self._lock:
            if name not in self._vaes:
                quiet_hf_logs()
                self._vaes[name] = load_vae(self.directory, ldm.name, self.device, self.dtype)
            return self._vaes[name]

    def ldm_of(self, file_backbone: str | None, source: str | os.PathLike[str]) -> LdmSpec:
        """The LDM whose VAE space a latent file is in: its ``backbone`` metadata, else the net's."""
        what = f"--compare-vae: latent file {os.fspath(source)}"
        name = file_backbone or self.net_backbone
        if name is None:
            raise ConfigError(
                f"{what} names no backbone (metadata `backbone`) and the PiD net is no LDM's preset: cannot tell "
                "which VAE's latent space it is in; decode with the LDM's preset (--backbone flux ...) or add "
                "the metadata"
            )
        if name in _NO_VAE:
            raise ConfigError(_no_vae(name, what))
        if not _is_ldm(name):
            raise ConfigError(
                f"{what}: backbone {name!r} is no LDM with a VAE (expected flux, flux2, sd3, ...)"
            )
        return ldm_spec(name)

    def check_channels(self, vae: Any, ldm: LdmSpec, channels: int | None, what: str) -> None:
        """ConfigError unless ``vae`` takes ``ldm``'s latent with ``channels`` (None: the LDM's);
        ``what`` names the latent's holder in the message ("latent file X holds")."""
        config = vae.config
        own = getattr(config, "latent_channels", None) or getattr(config, "z_dim", None)
        per_cell = 4 if ldm.packing == "flux2" else 1  # flux2: 2x2 patchified into the PiD latent
        wanted = ldm.channels if channels is None else channels
        if not isinstance(own, int) or own * per_cell != wanted:
            raise ConfigError(
                f"--vae {self.directory}: its {type(vae).__name__} has {own} latent channels, but {what} "
                f"{wanted}-channel {ldm.name} latents"
                + (f" ({own * per_cell} after the 2x2 patchify)" if per_cell > 1 else "")
                + ": pass that LDM's VAE"
            )

    def record(self, output: Path) -> Path:
        """The record of PiD's output ``output`` (``out_compare.json``), written last."""
        return beside_paths(output).record

    def check(self, latent: Any, source: str | os.PathLike[str]) -> Checked:
        """Accept a read latent file (:class:`pid_trt.io.LatentFile`) or refuse it in one line
        (ConfigError), before PiD decodes it."""
        ldm = self.ldm_of(latent.backbone, source)
        vae = self.vae_for(ldm)
        self.check_channels(vae, ldm, int(latent.latent.shape[1]), f"latent file {os.fspath(source)} holds")
        return Checked(ldm, vae)

    def write(
        self,
        checked: Checked,
        latent: Any,
        image: Any,
        output: Path,
        pid_files: Sequence[Path],
        pid_seconds: float,
    ) -> tuple[list[Path], dict[str, Any]]:
        """Decode ``latent`` with the VAE beside PiD's ``image`` [B, 3, H, W] (written to
        ``pid_files``), write the VAE's image, the side-by-side and the record (last).
        Returns (the paths written, the record)."""
        from pid_trt.integrations.vae_compare import compare_with_vae, write_comparison

        paths = beside_paths(output)
        start = time.perf_counter()
        cmp = compare_with_vae(checked.vae, latent.latent, checked.ldm.name, image)
        vae_seconds = time.perf_counter() - start
        written = write_comparison(cmp, paths.vae, paths.compare)
        root = paths.record.parent
        vae_files = written[: len(written) // 2]
        record = {
            "format": RECORD_FORMAT,
            "version": RECORD_VERSION,
            "ldm": checked.ldm.name,
            "vae": cmp.vae_name,
            "vae_dir": os.path.abspath(self.directory),
            "degrade_sigma": [round(float(s), 6) for s in latent.degrade_sigma],
            "size": [int(image.shape[-1]), int(image.shape[-2])],
            "vae_size": [int(cmp.vae_image.shape[-1]), int(cmp.vae_image.shape[-2])],
            "files": {
                "pid": [relative(p, root) for p in pid_files],
                "vae": [relative(p, root) for p in vae_files],
                "compare": [relative(p, root) for p in written[len(vae_files) :]],
            },
            "colour_drift": cmp.drift.as_dict(),
            "seconds": {"pid": round(pid_seconds, 4), "vae": round(vae_seconds, 4)},
        }
        write_json(paths.record, record)
        return [*written, paths.record], record


def vae_beside(
    compare_vae: bool,
    vae: str | os.PathLike[str] | None,
    net: NetOptions | None = None,
    runtime: RuntimeOptions | None = None,
) -> VaeBeside | None:
    """The ``--compare-vae`` / ``--vae DIR`` of ``pidtrt decode``: None without them, else the
    loaded :class:`VaeBeside`; ConfigError for one without the other or a net of no VAE.
    ``net``: the :class:`pid_trt.options.NetOptions` (its preset backbone names the LDM of
    latent files without metadata); ``runtime``: the :class:`pid_trt.options.RuntimeOptions`
    whose device the VAE runs on (None: the CPU)."""
    if not compare_vae:
        if vae is not None:
            raise ConfigError(f"--vae {os.fspath(vae)} is the LDM's VAE of --compare-vae: add --compare-vae")
        return None
    if vae is None:
        raise ConfigError(
            "--compare-vae needs the LDM's own VAE: pass --vae DIR (a diffusers VAE folder, or a pipeline "
            "folder with vae/)"
        )
    backbone = net.backbone if net is not None and net.net_config is None else None
    device = runtime.resolve().device if runtime is not None else "cpu"
    return VaeBeside(vae, str(backbone).lower() if backbone else None, device)


def _is_ldm(name: str) -> bool:
    try:
        ldm_spec(name)
    except ConfigError:
        return False
    return True


def _no_vae(backbone: str, what: str) -> str:
    return (
        f"--compare-vae: {what} is a {backbone} latent, made by a representation encoder, not a VAE: "
        "there is no VAE decode to compare PiD with"
    )


def write_run_manifest(
    beside: VaeBeside, jobs: Sequence[Any], results: Sequence[Any], decoder: Decoder, run_seconds: float = 0.0
) -> tuple[Path, dict[str, Any]]:
    """The run manifest of a many-file run (:func:`write_decode_manifest` at
    :func:`manifest_path`) from its jobs, its results (:class:`pid_trt.jobs.JobResult`, every
    rank's) and the loaded ``decoder``; returns (its path, the manifest)."""
    outcomes = {
        r.job.index: (r.outcome.value, " ".join(str(r.error).split()) if r.error is not None else None)
        for r in results
        if r.job is not None
    }
    info = {
        "pid": {"net": decoder.spec.name, "random_weights": decoder.spec.random_weights},
        "backend": decoder.backend_name,
        "precision": decoder.precision,
        "device": str(decoder.device),
        "vae_dir": os.path.abspath(beside.directory),
    }
    path = manifest_path([j.output for j in jobs])
    return path, write_decode_manifest(path, jobs, outcomes, info, run_seconds)


def write_decode_manifest(
    path: Path,
    jobs: Sequence[Any],
    outcomes: Mapping[int, tuple[str, str | None]],
    info: Mapping[str, Any],
    run_seconds: float = 0.0,
) -> dict[str, Any]:
    """Write a many-file ``decode --compare-vae`` run's manifest (JSON, atomically) and return
    it: ``info`` (the net, backend, precision, device, VAE folder), the colour space, counts,
    the mean drift over the files that have a record, and one entry per job (a
    :class:`pid_trt.jobs.Job`: ``name`` / ``output`` / ``index``), in order: ``{latent,
    output, status}`` plus the file's record (``done`` / ``skipped``), or its ``error``
    (``failed``); ``missing`` when not run (interrupted). ``outcomes``: ``index -> (status,
    one-line error)`` of this run."""
    root = path.parent
    entries = []
    for job in jobs:
        status, error = outcomes.get(job.index, (None, None))
        entry: dict[str, Any] = {"latent": job.name, "output": relative(job.output, root)}
        record = read_record(beside_paths(job.output).record) if status != "failed" else None
        if record is not None:
            entry["status"] = status or "done"
            entry.update(record)
        else:
            entry["status"] = status if status in ("failed", "missing") else "missing"
            if error:
                entry["error"] = error
        entries.append(entry)
    drifts = [e["colour_drift"] for e in entries if "colour_drift" in e]
    keys = [k for k in (drifts[0] if drifts else {}) if k != "space"]
    manifest = {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        **info,
        "colour_space": SPACE,
        "counts": {
            "files": len(entries),
            **{s: sum(e["status"] == s for e in entries) for s in ("done", "skipped", "failed", "missing")},
        },
        "mean_colour_drift": {k: round(sum(d[k] for d in drifts) / len(drifts), 4) for k in keys} or None,
        "timings": {
            "run_s": round(run_seconds, 4),
            "pid_s": round(sum(e.get("seconds", {}).get("pid", 0.0) for e in entries), 4),
            "vae_s": round(sum(e.get("seconds", {}).get("vae", 0.0) for e in entries), 4),
        },
        "files": entries,
    }
    write_json(path, manifest)
    return manifest


def manifest_path(outputs: Sequence[Path]) -> Path:
    """Where a run's manifest goes: :data:`MANIFEST_NAME` in the outputs' deepest common folder."""
    parents = [os.path.abspath(Path(p).parent) for p in outputs]
    return Path(os.path.commonpath(parents) if parents else ".") / MANIFEST_NAME
