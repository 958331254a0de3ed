"""A real worker for the job engine's tests: a text file of colour words in, PNG(s) out;
and a folder of tiny-preset latent files for the decode runs (:func:`write_tiny_latents`).

An input file holds one word per batch row, ``black`` or ``white``; the worker writes the
rows as 2x2 images with :func:`pid_trt.io.write_images` (atomic; ``stem_k.png`` for
several rows), where black is pixel value 0 and white 255 (the PNG writer's documented
end points). Any other word is refused, naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pid_trt.config import TINY
from pid_trt.errors import InputFileError
from pid_trt.io import write_images, write_latent_file
from pid_trt.jobs import Job

LEVELS = {"black": -1.0, "white": 1.0}
#: The PNG byte of each word: the writer maps -1 to 0 and 1 to 255.
BYTES = {"black": 0, "white": 255}


def write_input(path: Path, *words: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(" ".join(words))
    return path


def colour_png(job: Job) -> None:
    """The worker: read ``job.source``, write ``job.output``."""
    words = Path(job.source).read_text().split()
    if not words or any(w not in LEVELS for w in words):
        raise InputFileError(f"input {job.source}: expected words {sorted(LEVELS)}, got {words!r}")
    rows = torch.tensor([LEVELS[w] for w in words], dtype=torch.float32)
    write_images(rows.view(-1, 1, 1, 1).expand(-1, 3, 2, 2), job.output)


def png_values(path: Path) -> set[int]:
    """The distinct byte values of a PNG."""
    return set(np.unique(np.asarray(Image.open(path))).tolist())


def write_tiny_latents(folder: Path, count: int, cells: int, seed: int, backbone: str | None = None) -> Path:
    """``lat0.safetensors`` ... in ``folder`` (made): tiny-preset latents [1, C, cells, cells] and
    captions drawn from one generator seeded ``seed``, degrade_sigma 0; ``backbone`` metadata
    when given. Returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for i in range(count):
        write_latent_file(
            folder / f"lat{i}.safetensors",
            torch.randn(1, TINY.lq_latent_channels, cells, cells, generator=gen),
            torch.randn(1, TINY.txt_max_length, TINY.txt_embed_dim, generator=gen),
            torch.zeros(1),
            backbone=backbone,
        )
    return folder
