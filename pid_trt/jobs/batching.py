"""``pidtrt decode DIR --batch N``: consecutive same-size latent files of one run decoded
together as one batch, each file's rows then written to its own output.

Each file keeps the noise and caption of its own one-at-a-time decode (its noise drawn from
the run's seed for its own rows; a stand-in caption from the same seed), so the batched
images equal the single ones within the backend's batch tolerance (the network sees the
same inputs, only batched). A file that cannot be read fails alone at once; a batch whose
decode fails fails its files.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pid_trt.errors import ConfigError
from pid_trt.jobs.decode import DecodeSettings, file_caption, provenance
from pid_trt.jobs.outputs import Job

if TYPE_CHECKING:
    from pid_trt.decoder import Decoder


@dataclass
class _Held:
    job: Job
    latent: Any  # LatentFile
    caption: torch.Tensor
    text: dict[str, str]  # the file's provenance entries (pid_trt.io.provenance)
    future: Future


class BatchedDecode:
    """A job worker (:func:`pid_trt.jobs.run_jobs`) holding files back until ``batch`` of one
    shape are read, then decoding them as one batch and handing their images to ``writer``
    (an :class:`~pid_trt.io.writer.ImageWriter`). Returns each job's future; call :meth:`flush`
    when no job is left (``run_jobs(..., flush=worker.flush)``)."""

    def __init__(
        self,
        decoder: Decoder,
        settings: DecodeSettings,
        writer: Any,
        batch: int,
        sources: dict[str, None] | None = None,
    ) -> None:
        if batch < 1:
            raise ConfigError(f"--batch {batch}: expected at least 1 file per decode")
        if settings.noise_file is not None or settings.beside is not None or settings.prompt:
            raise ConfigError(
                "--batch takes neither --noise, --compare-vae nor --prompt: drop them or --batch"
            )
        self.decoder, self.settings, self.writer, self.batch = decoder, settings, writer, batch
        self.sources = sources if sources is not None else {}
        self._held: list[_Held] = []
        self._key: tuple | None = None
        self._lock = threading.Lock()

    def __call__(self, job: Job) -> Future:
        from pid_trt.io.caption import caption_for_latent
        from pid_trt.jobs.readahead import read_latent

        config = self.decoder.config
        lat = read_latent(job.source, config)  # read ahead while the held files decode
        given = caption_for_latent(lat, job.source, config, caption_file=self.settings.caption_file)
        chosen = file_caption(self.decoder, lat, Path(job.source), given, None, self.settings.seed)
        caption = chosen.embedding
        size = self.decoder.output_size(lat.latent_hw, self.settings.size)
        text = provenance(self.decoder, lat, self.settings, size[0], size[1], chosen.source).to_text()
        self.sources[chosen.source] = None
        key = (tuple(lat.latent.shape[1:]), tuple(caption.shape[1:]), size, job.output.suffix.lower())
        future: Future = Future()
        with self._lock:
            if self._held and key != self._key:
                self._decode_held()
            self._key = key
            self._held.append(_Held(job, lat, caption, text, future))
            if sum(h.latent.batch for h in self._held) >= self.batch:
                self._decode_held()
        return future

    def flush(self) -> None:
        """Decode what is held (the run's last, partial batch)."""
        with self._lock:
            if self._held:
                self._decode_held()

    def _decode_held(self) -> None:
        from pid_trt.io import output_format
        from pid_trt.io.images import pooled_output
        from pid_trt.sampling import draw_noise

        held, self._held = self._held, []
        s = self.settings
        try:
            height, width = self.decoder.output_size(held[0].latent.latent_hw, s.size)
            per_file = [draw_noise((h.latent.batch, 3, height, width), s.steps, s.seed) for h in held]
            noise = [torch.cat([draws[i] for draws in per_file]) for i in range(s.steps)]
            dtype, on_device = pooled_output(output_format(held[0].job.output), s.output, self.decoder.device)
            image = self.decoder.decode(
                torch.cat([h.latent.latent for h in held]), torch.cat([h.caption for h in held]),
                degrade_sigma=torch.cat([h.latent.degrade_sigma for h in held]), noise=noise, size=(height, width),
                steps=s.steps, output_dtype=dtype, keep_on_device=on_device, tiling=s.tiling,
            )  # fmt: skip
        except Exception as exc:
            for h in held:
                h.future.set_exception(exc)
            return
        row = 0
        for h in held:
            rows = image[row : row + h.latent.batch]
            row += h.latent.batch
            try:
                _chain(self.writer.submit(rows, Path(h.job.output), s.output, text=h.text), h.future)
            except Exception as exc:  # refused before anything was queued: this file alone
                h.future.set_exception(exc)


def _chain(source: Future, target: Future) -> None:
    def done(f: Future) -> None:
        exc = f.exception()
        if exc is None:
            target.set_result(f.result())
        else:
            target.set_exception(exc)

    source.add_done_callback(done)
