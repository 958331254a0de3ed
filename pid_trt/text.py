"""Caption encoder: Gemma-2-2B-it hidden states by upstream PiD's recipe.

PiD conditions on a [300, 2304] caption embedding (``pid/ARCHITECTURE.md`` §2.5). Upstream
computes it as follows, and :class:`CaptionEncoder` does the same:

1. The decoder stack of Gemma-2-2B-it (``AutoModelForCausalLM.from_pretrained(DIR)
   .get_decoder()``), in eval mode. Upstream runs it in bf16 on CUDA; here bf16 is the
   default on CUDA and fp32 on CPU.
2. The fixed instruction prompt (:data:`INSTRUCTION_LINES` joined with ``"\\n"``, ending
   in ``"User Prompt: "``) is prepended to each caption by plain string concatenation.
3. The tokenizer pads on the right to ``n_instruction_tokens + 298`` tokens, with
   truncation, where ``n_instruction_tokens = len(tokenizer.encode(INSTRUCTION_PROMPT))``
   (its BOS included).
4. The decoder is called with the input ids and the attention mask; its last hidden state
   (after the final norm) is kept at the BOS position and the last 299 positions:
   [B, 300, D], returned as float32 on the CPU.

Pad positions are kept as they come out of the model (the net never sees a mask), so they
are part of the embedding. ``transformers`` is imported only when an encoder is loaded.
"""

from __future__ import annotations

import gc
import json
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from pid_trt.errors import BackendUnavailableError, ConfigError, PidTrtError, ResourceError
from pid_trt.quoting import printable, quote

__all__ = [
    "CaptionEncoder",
    "EncoderClosedError",
    "INSTRUCTION_LINES",
    "INSTRUCTION_PROMPT",
    "MAX_LENGTH",
    "TEXT_ENCODER_ENV",
    "resolve_text_encoder_source",
]

#: The instruction ("CHI") prompt of every released PiD experiment, one entry per line.
INSTRUCTION_LINES: tuple[str, ...] = (
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions '
    "suitable for image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and "
    "spatial relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without "
    "overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, "
    "sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring "
    "glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus "
    "passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any "
    "additional commentary or evaluations:",
    "User Prompt: ",
)
#: What is prepended to every caption (no separator: it already ends in "User Prompt: ").
INSTRUCTION_PROMPT = "\n".join(INSTRUCTION_LINES)
#: Positions kept per caption: BOS + the last MAX_LENGTH - 1 positions.
MAX_LENGTH = 300
#: Environment variable naming the text encoder when none is given.
TEXT_ENCODER_ENV = "PIDTRT_TEXT_ENCODER"
#: The hub id of the weights (gated: accept the Gemma terms on the hub first).
GEMMA_HUB_ID = "google/gemma-2-2b-it"
GET_WEIGHTS_HINT = (
    f"get it with `hf download {GEMMA_HUB_ID} --local-dir DIR` "
    "(Gemma Terms of Use; accept them on the model's hub page first)"
)
_EXTRA_HINT = "pip install 'pid-trt[text]'"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DEFAULT_BATCH = 16


class EncoderClosedError(PidTrtError, RuntimeError):
    """A caption encoder was used after :meth:`CaptionEncoder.free`."""


def _require_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise BackendUnavailableError(
            f"caption encoding needs transformers, which is not installed ({exc}): {_EXTRA_HINT}"
        ) from None
    return transformers


def resolve_text_encoder_source(source: str | os.PathLike[str] | None) -> Path:
    """The local directory of the text encoder named by ``source``.

    ``source``: a local transformers directory; None reads ``$PIDTRT_TEXT_ENCODER``; an id
    like ``google/gemma-2-2b-it`` that is not a local path is looked up in the local Hugging
    Face cache only (never downloaded). The directory must hold ``config.json`` (model_type
    gemma2), a tokenizer (``tokenizer.json`` or ``tokenizer.model``) and safetensors weights.
    Raises ConfigError naming the path and how to get the weights.
    """
    if source is None:
        source = os.environ.get(TEXT_ENCODER_ENV) or None
        if source is None:
            raise ConfigError(
                f"no text encoder given: pass a Gemma-2-2B-it directory (--text-encoder DIR) or set "
                f"{TEXT_ENCODER_ENV}; {GET_WEIGHTS_HINT}"
            )
    text = os.fspath(source)
    path = Path(text).expanduser()
    if not path.exists() and _HUB_ID_RE.match(text) and not text.startswith("."):
        path = _from_hf_cache(text)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise ConfigError(
            f"text encoder {printable(text)}: {what}; expected a local transformers directory of Gemma-2-2B-it, "
            f"{GET_WEIGHTS_HINT}"
        )
    _check_encoder_dir(path, printable(text))
    return path


def _from_hf_cache(repo_id: str) -> Path:
    """The cached snapshot of ``repo_id`` in the local Hugging Face cache, or a ConfigError."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        _require_transformers()  # transformers brings huggingface_hub: report the extra
        raise ConfigError(f"text encoder {repo_id}: no such directory") from None
    try:
        return Path(snapshot_download(repo_id=repo_id, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError and friends: not cached, never download
        raise ConfigError(
            f"text encoder {repo_id}: no such directory and not in the local Hugging Face cache "
            f"({type(exc).__name__}); nothing is downloaded, {GET_WEIGHTS_HINT}"
        ) from None


def _check_encoder_dir(path: Path, name: str) -> None:
    expected = f"expected a transformers directory of Gemma-2-2B-it, {GET_WEIGHTS_HINT}"
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"text encoder {name}: no config.json; {expected}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"text encoder {name}: unreadable config.json ({printable(exc)}); {expected}"
        ) from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "gemma2":
        raise ConfigError(
            f"text encoder {name}: config.json has model_type {quote(model_type)}, not 'gemma2'; {expected}"
        )
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise ConfigError(f"text encoder {name}: no tokenizer.json / tokenizer.model; {expected}")
    if not any(path.glob("*.safetensors")):
        raise ConfigError(f"text encoder {name}: no *.safetensors weights; {expected}")


def _resolve_device(device: str) -> torch.device:
    text = str(device)
    if text != "cpu" and not re.fullmatch(r"cuda(:\d+)?", text):
        raise ConfigError(f"text encoder device {text!r}: expected cpu or cuda[:N]")
    dev = torch.device(text)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"text encoder device {text!r}: CUDA is not available; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"text encoder device {text!r}: only {torch.cuda.device_count()} CUDA device(s)"
            )
    return dev


def _resolve_dtype(dtype: str | None, device: torch.device) -> str:
    if dtype is None:
        return "bf16" if device.type == "cuda" else "fp32"
    if dtype not in _DTYPES:
        raise ConfigError(f"text encoder dtype {dtype!r}: expected fp32 or bf16")
    return dtype


class CaptionEncoder:
    """Gemma-2-2B-it caption embeddings [N, 300, D] by upstream PiD's recipe (see the module doc).

    Load with :meth:`load`; :meth:`encode` is thread-safe (one lock; calls run one at a
    time). :meth:`free` (alias :meth:`close`, also on leaving a ``with`` block) releases the
    model.
    """

    #: Positions kept per caption (the net's text length).
    max_length: int = MAX_LENGTH

    def __init__(self, model, tokenizer, *, device: torch.device, dtype: str, source: str = "") -> None:
        """Wrap an already loaded decoder stack and tokenizer (use :meth:`load` normally)."""
        if tokenizer.pad_token_id is None:
            raise ConfigError(
                f"text encoder {printable(source)}: the tokenizer has no pad token; expected Gemma's"
            )
        tokenizer.padding_side = "right"
        self._model = model
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self.device = torch.device(device)
        self.dtype = dtype
        self.source = source
        self._embed_dim = int(model.config.hidden_size)
        #: Tokens of the instruction prompt alone, BOS included.
        self.n_instruction_tokens = len(tokenizer.encode(INSTRUCTION_PROMPT))
        #: Tokenized length of every (instruction + caption): padded / truncated to this.
        self.token_length = self.n_instruction_tokens + self.max_length - 2

    @classmethod
    def load(
        cls, source: str | os.PathLike[str] | None = None, *, device: str = "cpu", dtype: str | None = None
    ) -> CaptionEncoder:
        """Load Gemma-2-2B-it from ``source`` (see :func:`resolve_text_encoder_source`).

        device: cpu or cuda[:N]. dtype: fp32 or bf16 (default bf16 on CUDA, fp32 on CPU).
        Raises ConfigError (bad source / option), BackendUnavailableError (no transformers,
        no CUDA).
        """
        dev = _resolve_device(device)
        dtype = _resolve_dtype(dtype, dev)
        _require_transformers()
        path = resolve_text_encoder_source(source)
        from safetensors import SafetensorError
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a local load: no "Loading weights" bar on stderr
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            causal_lm = AutoModelForCausalLM.from_pretrained(
                path,
                dtype=_DTYPES[dtype],
                attn_implementation="eager",  # transformers' default for Gemma-2 (soft-capped attention)
                local_files_only=True,
                use_safetensors=True,
            )
            model = causal_lm.get_decoder()
            del causal_lm
            model = model.to(dev).eval().requires_grad_(False)
        except torch.cuda.OutOfMemoryError as exc:
            raise ResourceError(
                f"text encoder {path}: out of memory on {dev} while loading ({exc})"
            ) from None
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
            first = " ".join(str(exc).split())[:300]
            raise ConfigError(
                f"text encoder {path}: cannot be loaded ({type(exc).__name__}: {first})"
            ) from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        return cls(model, tokenizer, device=dev, dtype=dtype, source=str(path))

    @property
    def embed_dim(self) -> int:
        """D, the hidden size of the text encoder (2304 for Gemma-2-2B)."""
        return self._embed_dim

    @property
    def closed(self) -> bool:
        return self._model is None

    def _check_open(self) -> None:
        if self._model is None:
            raise EncoderClosedError("caption encoder was freed; load a new one with CaptionEncoder.load()")

    def tokenize(self, prompts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """The recipe's tokenizer output (``input_ids``, ``attention_mask``), [N, token_length] each."""
        prompts = _as_prompt_list(prompts)
        with self._lock:
            self._check_open()
            return self._tokenize(prompts)

    def _tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        enc = self._tokenizer(
            [INSTRUCTION_PROMPT + p for p in prompts],
            max_length=self.token_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def encode(self, prompts: str | Sequence[str], *, batch_size: int = _DEFAULT_BATCH) -> torch.Tensor:
        """Caption embeddings [N, 300, D], float32 on the CPU; row i is prompt i ("" allowed).

        Prompts run through the model ``batch_size`` at a time; rows do not depend on each
        other (every row is padded to the same length).
        """
        prompts = _as_prompt_list(prompts)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r}: expected an integer >= 1")
        keep = [0, *range(self.token_length - (self.max_length - 1), self.token_length)]
        out = []
        with self._lock:
            self._check_open()
            for start in range(0, len(prompts), batch_size):
                enc = self._tokenize(prompts[start : start + batch_size])
                try:
                    with torch.inference_mode():
                        hidden = self._model(
                            input_ids=enc["input_ids"].to(self.device),
                            attention_mask=enc["attention_mask"].to(self.device),
                        )[0]
                except torch.cuda.OutOfMemoryError:
                    raise ResourceError(
                        f"caption encoder: out of memory on {self.device} at batch_size={batch_size}; "
                        "encode fewer prompts at a time"
                    ) from None
                out.append(hidden[:, keep].to("cpu", torch.float32))
        return torch.cat(out)

    def free(self) -> None:
        """Release the model and tokenizer (and cached CUDA memory); idempotent."""
        with self._lock:
            if self._model is None:
                return
            self._model = None
            self._tokenizer = None
            gc.collect()
            if self.device.type == "cuda" and torch.cuda.is_available():
                torch.cuda.empty_cache()

    close = free

    def __enter__(self) -> CaptionEncoder:
        return self

    def __exit__(self, *exc) -> None:
        self.free()

    def __repr__(self) -> str:
        state = "freed" if self._model is None else f"{self.device}, {self.dtype}"
        return f"CaptionEncoder({self.source!r}, D={self._embed_dim}, {state})"


def _as_prompt_list(prompts: str | Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    try:
        items = list(prompts)
    except TypeError:
        raise ConfigError(
            f"prompts: expected a string or a sequence of strings, got {type(prompts).__name__}"
        ) from None
    bad = [type(p).__name__ for p in items if not isinstance(p, str)]
    if bad:
        raise ConfigError(f"prompts: expected strings, got {bad[0]}")
    if not items:
        raise ConfigError("prompts: none given; expected at least one caption (an empty string is allowed)")
    return items
