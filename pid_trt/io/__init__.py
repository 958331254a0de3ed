"""Latent, noise and image files (docs/design.md §3); every malformed input raises InputFileError."""

from pid_trt.io.encoders import OutputFormat, OutputOptions, output_format
from pid_trt.io.images import SUPPORTED_SUFFIXES, png_paths, quantize, to_uint8, write_images
from pid_trt.io.latent import (
    LatentFile,
    latent_from_tensors,
    read_latent_file,
    sample_latent,
    write_latent_file,
)
from pid_trt.io.noise import noise_from_tensors, read_noise_file, write_noise_file

__all__ = [
    "SUPPORTED_SUFFIXES",
    "LatentFile",
    "OutputFormat",
    "OutputOptions",
    "latent_from_tensors",
    "noise_from_tensors",
    "output_format",
    "png_paths",
    "quantize",
    "read_latent_file",
    "read_noise_file",
    "sample_latent",
    "to_uint8",
    "write_images",
    "write_latent_file",
    "write_noise_file",
]
