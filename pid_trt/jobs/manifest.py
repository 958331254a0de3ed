"""Image inputs with their prompts: image files, folders, globs, and JSON-lines manifests.

A manifest (upstream's ``--manifest``) holds one JSON object a line, ``{"image": PATH,
"prompt": TEXT}`` (``prompt`` optional; blank lines skipped). A relative PATH is taken from
the working directory, as upstream does, or else from the manifest's folder when it is there
only. The whole manifest is read and checked before any image is: a bad line fails the
command at once, naming the file and the line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pid_trt.errors import InputFileError
from pid_trt.input_files import read_text
from pid_trt.jobs.inputs import Problem, expand_inputs
from pid_trt.quoting import printable

#: Image suffixes a folder contributes (lower and upper case).
IMAGE_SUFFIXES = tuple(
    s for x in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff") for s in (x, x.upper())
)


@dataclass(frozen=True)
class ImageSample:
    """One image to encode and its prompt (None: none given)."""

    image: Path
    prompt: str | None = None


def read_manifest(path: str | os.PathLike[str]) -> list[ImageSample]:
    """The samples of a JSON-lines manifest, in order; InputFileError naming the file (and the
    line) for a missing / non-UTF-8 / empty file, a line that is not a JSON object, or one
    without a string ``image`` (``prompt``, when there, must be a string)."""
    what = f"manifest {printable(path)}"
    text = read_text(path, what, "a JSON-lines file")
    base = Path(path).parent
    samples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputFileError(f"{what} line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise InputFileError(f"{what} line {number}: a JSON {type(obj).__name__}, expected an object")
        image = obj.get("image")
        if not isinstance(image, str) or not image:
            found = "no" if "image" not in obj else f"a {type(image).__name__}"
            raise InputFileError(
                f'{what} line {number}: {found} "image", expected {{"image": PATH, "prompt": TEXT}}'
            )
        prompt = obj.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise InputFileError(
                f'{what} line {number}: "prompt" is a {type(prompt).__name__}, expected text'
            )
        samples.append(ImageSample(_locate(Path(image), base), prompt))
    if not samples:
        raise InputFileError(f"{what}: no lines, expected one JSON object per image")
    return samples


def _locate(image: Path, base: Path) -> Path:
    if image.is_absolute() or image.exists() or not (base / image).exists():
        return image
    return base / image


def image_samples(
    args: Sequence[str | os.PathLike[str]],
    manifests: Sequence[str | os.PathLike[str]] = (),
    prompt: str | None = None,
) -> tuple[list[ImageSample], list[Problem]]:
    """The images the arguments name (files, folders' images, globs; see
    :func:`pid_trt.jobs.expand_inputs`) with ``prompt``, then each manifest's samples (a
    line's own prompt, else ``prompt``); and the arguments that named no image."""
    files, problems = expand_inputs(args, IMAGE_SUFFIXES)
    samples = [ImageSample(f, prompt) for f in files]
    for manifest in manifests:
        samples += [
            s if s.prompt is not None else ImageSample(s.image, prompt) for s in read_manifest(manifest)
        ]
    return samples, problems
