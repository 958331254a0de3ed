"""The caption encoder (pid_trt.text) on a tiny random Gemma-2 built offline: upstream's recipe
re-derived by hand from the model's raw forward, padding, truncation, kept positions, errors."""

from __future__ import annotations

import json
import sys
import threading

import pytest
import torch

from pid_trt.errors import BackendUnavailableError, ConfigError
from pid_trt.text import (
    INSTRUCTION_LINES,
    INSTRUCTION_PROMPT,
    MAX_LENGTH,
    TEXT_ENCODER_ENV,
    CaptionEncoder,
    EncoderClosedError,
    resolve_text_encoder_source,
)
from tests.text_helpers import EXTRA_WORDS, TINY_HIDDEN, make_tiny_gemma

CAPTIONS = ["a red fox jumps over the lazy brown dog", "", "photo of mountain lake at sunset", "zebra"]
TOL = 1e-5  # fp32 on the CPU: same ops, at most a different batch size


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return make_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture(scope="module")
def encoder(gemma_dir):
    enc = CaptionEncoder.load(gemma_dir)
    yield enc
    enc.free()


@pytest.fixture(scope="module")
def raw(gemma_dir):
    """The tokenizer and the full decoder stack, loaded directly with transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gemma_dir)
    lm = AutoModelForCausalLM.from_pretrained(gemma_dir, attn_implementation="eager").eval()
    return tok, lm.model


def by_hand(tok, model, caption: str, instruction: bool = True) -> torch.Tensor:
    """The recipe spelled out: ids of (instruction + caption) with BOS, right-padded with <pad>
    to n_instruction + 298 (or truncated), the mask, the last hidden state, BOS + last 299."""
    n_instr = len(tok.encode(INSTRUCTION_PROMPT)) if instruction else 2  # 2: length = 300 without it
    length = n_instr + MAX_LENGTH - 2
    ids = tok.encode((INSTRUCTION_PROMPT if instruction else "") + caption)[:length]
    mask = [1] * len(ids) + [0] * (length - len(ids))
    ids = ids + [tok.pad_token_id] * (length - len(ids))
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([mask])).last_hidden_state
    return torch.cat([hidden[:, :1], hidden[:, length - (MAX_LENGTH - 1) :]], dim=1)


def test_instruction_prompt_is_upstreams():
    assert len(INSTRUCTION_LINES) == 8
    assert INSTRUCTION_PROMPT.startswith('Given a user prompt, generate an "Enhanced prompt"')
    assert INSTRUCTION_PROMPT.endswith(":\nUser Prompt: ")
    assert INSTRUCTION_PROMPT.count("\n") == 7


def test_shape_dtype_and_embed_dim(encoder):
    out = encoder.encode(CAPTIONS)
    assert out.shape == (len(CAPTIONS), MAX_LENGTH, TINY_HIDDEN) and out.dtype == torch.float32
    assert out.device.type == "cpu" and torch.isfinite(out).all()
    assert encoder.embed_dim == TINY_HIDDEN and encoder.max_length == MAX_LENGTH == CaptionEncoder.max_length
    assert encoder.encode("a red fox").shape == (1, MAX_LENGTH, TINY_HIDDEN)  # a str is one prompt


@pytest.mark.parametrize("caption", CAPTIONS)
def test_recipe_matches_raw_forward(encoder, raw, caption):
    tok, model = raw
    assert torch.allclose(encoder.encode(caption), by_hand(tok, model, caption), atol=TOL, rtol=0)


def test_token_layout_and_kept_positions(encoder, raw):
    tok, _ = raw
    n = encoder.n_instruction_tokens
    assert n == len(tok.encode(INSTRUCTION_PROMPT)) and tok.encode(INSTRUCTION_PROMPT)[0] == tok.bos_token_id
    assert encoder.token_length == n + 298
    caption = "a red fox"
    enc = encoder.tokenize(caption)
    ids, mask = enc["input_ids"][0], enc["attention_mask"][0]
    assert ids.shape == (n + 298,) and ids[0] == tok.bos_token_id
    assert ids[:n].tolist() == tok.encode(INSTRUCTION_PROMPT)  # the instruction, then the caption
    assert ids[n : n + 3].tolist() == tok.encode(caption, add_special_tokens=False)
    assert (ids[n + 3 :] == tok.pad_token_id).all() and mask.tolist() == [1] * (n + 3) + [0] * 295  # right
    # kept: position 0 = BOS, then token n-1 (the instruction's last) ... the end of the pads
    first_kept = encoder.token_length - (MAX_LENGTH - 1)
    assert first_kept == n - 1


def test_instruction_prompt_changes_the_output(encoder, raw):
    tok, model = raw
    caption = CAPTIONS[0]
    with_it = encoder.encode(caption)
    without = by_hand(tok, model, caption, instruction=False)
    assert with_it.shape == without.shape
    assert (with_it - without).abs().max() > 0.1
    # ... while the by-hand derivation with it agrees (the instruction is what makes the difference)
    assert torch.allclose(with_it, by_hand(tok, model, caption), atol=TOL, rtol=0)


def test_batch_rows_equal_single_encodes(encoder):
    singles = torch.cat([encoder.encode(c) for c in CAPTIONS])
    batch = encoder.encode(CAPTIONS)
    chunked = encoder.encode(CAPTIONS, batch_size=3)
    assert torch.allclose(batch, singles, atol=TOL, rtol=0)
    assert torch.allclose(chunked, singles, atol=TOL, rtol=0)
    assert not torch.allclose(batch[0], batch[2], atol=0.1)  # rows really differ


def test_long_caption_is_truncated(encoder):
    words = (EXTRA_WORDS.split() * 30)[:400]  # one token per word with the tiny tokenizer
    long_caption, budget = " ".join(words), 298  # the caption's share of n_instruction + 298
    enc = encoder.tokenize(long_caption)
    assert enc["input_ids"].shape == (1, encoder.token_length) and enc["attention_mask"].all()
    out = encoder.encode(long_caption)
    assert out.shape == (1, MAX_LENGTH, TINY_HIDDEN)
    assert torch.allclose(out, encoder.encode(" ".join(words[:budget])), atol=TOL, rtol=0)
    assert torch.allclose(out, encoder.encode(" ".join(words[:budget] + ["house"] * 50)), atol=TOL, rtol=0)
    shorter = encoder.encode(" ".join(words[: budget - 1]))
    assert (out - shorter).abs().max() > 1e-3  # the last kept token does count


def test_empty_caption(encoder):
    out = encoder.encode("")
    assert out.shape == (1, MAX_LENGTH, TINY_HIDDEN) and torch.isfinite(out).all()
    assert not torch.allclose(out, encoder.encode("a"), atol=1e-3)


def test_bf16_is_close_to_fp32(gemma_dir, encoder):
    with CaptionEncoder.load(gemma_dir, dtype="bf16") as enc16:
        assert enc16.dtype == "bf16" and next(enc16._model.parameters()).dtype == torch.bfloat16
        out16 = enc16.encode(CAPTIONS[:2])
    ref = encoder.encode(CAPTIONS[:2])
    assert out16.dtype == torch.float32
    assert (out16 - ref).abs().max() / ref.abs().max() < 0.1


def test_threads_share_one_encoder(encoder):
    expected = encoder.encode(CAPTIONS)
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        results[i] = encoder.encode(CAPTIONS[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(CAPTIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(CAPTIONS)):
        assert torch.allclose(results[i][0], expected[i], atol=TOL, rtol=0)


def test_free_is_idempotent_and_final(gemma_dir):
    with CaptionEncoder.load(gemma_dir) as enc:
        enc.encode("a")
    assert enc.closed
    enc.free()
    enc.close()
    with pytest.raises(EncoderClosedError, match="freed"):
        enc.encode("a")


def test_env_var_source(gemma_dir, monkeypatch):
    monkeypatch.setenv(TEXT_ENCODER_ENV, str(gemma_dir))
    assert resolve_text_encoder_source(None) == gemma_dir
    monkeypatch.delenv(TEXT_ENCODER_ENV)
    with pytest.raises(ConfigError, match=TEXT_ENCODER_ENV):
        resolve_text_encoder_source(None)


def test_bad_sources(tmp_path, gemma_dir):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=r"nowhere: does not exist.*hf download google/gemma-2-2b-it"):
        CaptionEncoder.load(missing)
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache"):
        CaptionEncoder.load("nobody-pidtrt/no-such-model-0")  # never downloaded
    with pytest.raises(ConfigError, match="no config.json"):
        CaptionEncoder.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="model_type 'llama'"):
        CaptionEncoder.load(tmp_path)
    (tmp_path / "config.json").write_text((gemma_dir / "config.json").read_text())
    with pytest.raises(ConfigError, match="tokenizer"):
        CaptionEncoder.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text((gemma_dir / "tokenizer.json").read_text())
    with pytest.raises(ConfigError, match="safetensors"):
        CaptionEncoder.load(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        CaptionEncoder.load(tmp_path)


def test_bad_options_and_prompts(gemma_dir, encoder):
    with pytest.raises(ConfigError, match="expected cpu or cuda"):
        CaptionEncoder.load(gemma_dir, device="gpu")
    with pytest.raises(ConfigError, match="expected fp32 or bf16"):
        CaptionEncoder.load(gemma_dir, dtype="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="CUDA"):
            CaptionEncoder.load(gemma_dir, device="cuda")
    with pytest.raises(ConfigError, match="none given"):
        encoder.encode([])
    with pytest.raises(ConfigError, match="expected strings"):
        encoder.encode(["a", 3])
    with pytest.raises(ConfigError, match="batch_size"):
        encoder.encode("a", batch_size=0)


def test_without_transformers(gemma_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    with pytest.raises(BackendUnavailableError, match=r"pid-trt\[text\]"):
        CaptionEncoder.load(gemma_dir)


def test_import_does_not_need_transformers():
    import subprocess

    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import pid_trt.text, pid_trt.cli.encode_caption\n"
        "print(pid_trt.text.MAX_LENGTH)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "300", res.stderr
