"""The LDM's own VAE beside PiD: the baseline decode of a captured latent, upscaled to PiD's
size, the two side by side (labelled), and PiD's colour drift against it.

The VAE decodes at the LDM's resolution (the latent's h x w times the VAE's 8, or 16 for
FLUX.2); PiD decodes the same latent to the output size (4x or 8x that). The upscale is
bicubic on the float image (then clamped to [-1, 1]), and the drift
(:func:`~pid_trt.integrations.colour.colour_drift`) compares PiD with that upscaled image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pid_trt.atomic import atomic_write
from pid_trt.errors import InputFileError
from pid_trt.integrations.colour import ColourDrift, colour_drift
from pid_trt.integrations.vae import decode_latent

#: Grey of the label strip and the gap between the two images (uint8).
_BACKGROUND = (24, 24, 24)
_TEXT = (235, 235, 235)


@dataclass(frozen=True)
class VaeComparison:
    """One capture decoded by both decoders.

    vae_image: the VAE's decode [B, 3, h, w] float32 in [-1, 1] at the LDM's resolution;
    upscaled: that image resized to PiD's [B, 3, H, W]; pid_image: PiD's [B, 3, H, W];
    drift: PiD's colour drift against ``upscaled``; vae_name: the VAE's class name.
    """

    vae_image: torch.Tensor
    upscaled: torch.Tensor
    pid_image: torch.Tensor
    drift: ColourDrift
    vae_name: str

    def side_by_side(self) -> list[torch.Tensor]:
        """Per image of the batch: [Hs, 2W + gap, 3] uint8, the upscaled VAE image left and
        PiD right, each under a label strip naming it and its size."""
        _, _, h, w = self.vae_image.shape
        big_h, big_w = self.pid_image.shape[-2:]
        labels = (f"VAE ({self.vae_name}) {w}x{h}, upscaled", f"PiD {big_w}x{big_h}")
        return [
            labelled_pair(self.upscaled[k], self.pid_image[k], labels) for k in range(self.pid_image.shape[0])
        ]


def upscale(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, 3, h, w] in [-1, 1] -> [B, 3, H, W] (``size`` = (H, W)), bicubic, clamped to [-1, 1]."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image.float()
    big = torch.nn.functional.interpolate(image.float(), size=size, mode="bicubic", align_corners=False)
    return big.clamp(-1.0, 1.0)


def compare_with_vae(vae: Any, latent: torch.Tensor, backbone: str, pid_image: torch.Tensor) -> VaeComparison:
    """Decode ``latent`` (the PiD latent [B, C, h, w] PiD decoded into ``pid_image``
    [B, 3, H, W]) with the LDM's ``vae``, upscale it to (H, W) and measure the drift."""
    vae_image = decode_latent(vae, latent, backbone)
    big = upscale(vae_image, tuple(pid_image.shape[-2:]))
    pid = pid_image.detach().float().cpu()
    return VaeComparison(vae_image, big, pid, colour_drift(pid, big), type(vae).__name__)


def _uint8(image: torch.Tensor) -> Any:
    """[3, H, W] in [-1, 1] -> [H, W, 3] uint8 numpy, as :func:`pid_trt.io.to_uint8` rounds."""
    from pid_trt.io import to_uint8

    return to_uint8(image.unsqueeze(0))[0].numpy()


def labelled_pair(left: torch.Tensor, right: torch.Tensor, labels: tuple[str, str]) -> torch.Tensor:
    """Two images [3, H, W] in [-1, 1] side by side, each under a strip with its label:
    [H + strip, 2W + gap, 3] uint8 (strip about H / 20 pixels, gap about W / 128). A label
    too long for its image's width gets a smaller font, and is cut at the image's edge."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    h, w = left.shape[-2:]
    font_px = max(10, min(64, h // 32))
    strip = int(font_px * 1.6)
    gap = max(2, w // 128)
    canvas = Image.new("RGB", (2 * w + gap, h + strip), _BACKGROUND)
    for x, image, text in ((0, left, labels[0]), (w + gap, right, labels[1])):
        canvas.paste(Image.fromarray(_uint8(image)), (x, strip))
        label = Image.new("RGB", (w, strip), _BACKGROUND)  # drawn apart: the text cannot spill over
        draw = ImageDraw.Draw(label)
        size = font_px
        font = ImageFont.load_default(size=size)
        while size > 6 and draw.textlength(text, font=font) > w - font_px // 2:
            size -= 1
            font = ImageFont.load_default(size=size)
        draw.text((font_px // 4, (strip - size) // 2), text, fill=_TEXT, font=font)
        canvas.paste(label, (x, 0))
    return torch.from_numpy(np.asarray(canvas, dtype=np.uint8).copy())


def write_png(pixels: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write [H, W, 3] uint8 pixels as a PNG, atomically; InputFileError for a failed write."""
    from PIL import Image

    target = Path(path)
    try:
        with atomic_write(target) as tmp:
            Image.fromarray(pixels.numpy()).save(tmp, format="PNG")
    except OSError as exc:
        raise InputFileError(f"output {os.fspath(target)}: write failed ({exc.strerror or exc})") from None
    return target


def write_comparison(cmp: VaeComparison, vae_path: Path, side_path: Path) -> list[Path]:
    """Write the VAE's own image (``vae_path``, its native size, PNG) and the side-by-side
    (``side_path``) atomically; a batch writes ``stem_k.png`` for each image, as
    :func:`pid_trt.io.write_images`. Returns the paths written."""
    from pid_trt.io import png_paths, write_images

    written = write_images(cmp.vae_image, vae_path)
    pairs = cmp.side_by_side()
    for pixels, target in zip(pairs, png_paths(side_path, len(pairs)), strict=True):
        written.append(write_png(pixels, target))
    return written
