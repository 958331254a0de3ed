"""``pidtrt encode-caption``: caption embeddings [N, 300, D] from Gemma-2-2B-it, by upstream's recipe."""

from __future__ import annotations

from pathlib import Path

import typer

from pid_trt.cli.errors import cli_errors
from pid_trt.cli.flags import PromptsFile, TextEncoderEnv
from pid_trt.cli.options import CaptionStoreDir, CaptionStoreMaxMb, TextDtype
from pid_trt.errors import ConfigError, InputFileError
from pid_trt.io.latent import CAPTION_KEY
from pid_trt.jobs.prompts import read_prompts_file


@cli_errors
def encode_caption(
    prompts: list[str] | None = typer.Argument(
        None, help='Captions to encode (row i of the output = prompt i; "" is an empty caption).'
    ),
    prompts_file: PromptsFile = None,
    text_encoder: TextEncoderEnv = None,
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    text_dtype: TextDtype = None,
    null: bool = typer.Option(
        False,
        "--null",
        help='Write the null caption (the recipe\'s encoding of "") for `decode --null-caption`.',
    ),
    caption_store: CaptionStoreDir = None,
    caption_store_max_mb: CaptionStoreMaxMb = None,
    output: Path = typer.Option(..., "-o", "--output", help="Output file (.safetensors)."),
) -> None:
    """Write caption_embedding [N, 300, D] float32 for the prompts (PiD's caption conditioning).
    Prompts found in the caption store are not encoded again (the encoder is not even loaded)."""
    from pid_trt.caption_store import CaptionStore
    from pid_trt.captions import CaptionProvider
    from pid_trt.io.caption import write_caption_file
    from pid_trt.text import resolve_text_encoder_source

    all_prompts = list(prompts or [])
    if prompts_file is not None:
        all_prompts += read_prompts_file(prompts_file)
    if null:
        if all_prompts:
            raise ConfigError('--null writes the null caption (the encoding of ""): drop the prompts')
        all_prompts = [""]
    if not all_prompts:
        raise ConfigError("no prompts: give captions as arguments or with --prompts-file (or --null)")
    if output.suffix != ".safetensors":
        raise ConfigError(f"-o {output}: expected a .safetensors file")
    if not output.parent.is_dir():
        raise InputFileError(f"-o {output}: directory {output.parent} does not exist")
    if output.is_dir():
        raise InputFileError(f"-o {output}: is a directory")

    source = resolve_text_encoder_source(text_encoder)  # fail before loading anything heavy
    store = CaptionStore.default(caption_store, caption_store_max_mb)
    provider = CaptionProvider(source, device=device, dtype=text_dtype, keep=True, max_entries=0, store=store)
    try:
        emb, ran = provider.encode_traced(all_prompts)
    finally:
        provider.free()
    metadata = {"text_encoder": Path(source).name, "text_dtype": provider.dtype, "null": str(null).lower()}
    write_caption_file(output, emb, all_prompts, metadata)
    n, t, d = emb.shape
    what = "the null caption" if null else f"{n} prompt{'s' * (n != 1)}"
    how = "encoded" if ran else "all from the caption store"
    typer.echo(f"wrote {output}: {CAPTION_KEY} [{n}, {t}, {d}] float32 ({what}; {how})")
