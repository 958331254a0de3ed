"""A tiny random Gemma-2 text encoder, built offline, for the caption-encoder tests.

``make_tiny_gemma(dir)`` writes a transformers directory shaped like Gemma-2-2B-it's
(``config.json`` with ``model_type`` "gemma2", safetensors weights, ``tokenizer.json``):
a 2-layer, 32-wide random Gemma-2 and a word-level tokenizer trained on a small corpus
that covers the recipe's instruction prompt. Like Gemma's tokenizer it puts ``<bos>`` in
front of every encoded text (no ``<eos>``) and pads with ``<pad>`` on the right.
"""

from __future__ import annotations

from pathlib import Path

#: Hidden size D of the tiny model.
TINY_HIDDEN = 32
#: Words the tiny tokenizer knows besides the instruction prompt's (captions in tests use them).
EXTRA_WORDS = (
    "a red fox jumps over the lazy brown dog in snow photo of mountain lake at sunset "
    "one two three four five six seven eight nine ten blue green small big house tree"
)
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")


def _corpus() -> list[str]:
    from pid_trt.text import INSTRUCTION_LINES

    return [*INSTRUCTION_LINES, EXTRA_WORDS]


def make_tiny_tokenizer():
    """A ``PreTrainedTokenizerFast`` with Gemma's special tokens, BOS added, right padding."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=1000, min_frequency=1, special_tokens=list(SPECIAL_TOKENS))
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="right",
    )


def make_tiny_gemma(directory: Path, seed: int = 0) -> Path:
    """Write a tiny random Gemma-2 causal LM and its tokenizer to ``directory``; return it."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer()
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        sliding_window=64,  # shorter than the sequences, so the sliding layer is exercised
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norms, so every layer shapes the output
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.5)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
