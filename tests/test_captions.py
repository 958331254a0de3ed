"""The caption cache (pid_trt.captions) on a real tiny Gemma-2: a repeated prompt does not run
the encoder and gets the identical embedding; the cache is bounded; another encoder never
gets the first one's embeddings; the Decoder offers it (``caption_cache=``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pid_trt.captions import DEFAULT_CAPTION_CACHE, TEXT_ENCODER_ENV, CaptionProvider
from pid_trt.errors import ConfigError
from pid_trt.text import CaptionEncoder, EncoderClosedError


@pytest.fixture(scope="module")
def gemma_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny Gemmas with different random weights."""
    from tests.text_helpers import make_tiny_gemma

    root = tmp_path_factory.mktemp("gemmas")
    return make_tiny_gemma(root / "a", seed=0), make_tiny_gemma(root / "b", seed=1)


def counts(provider) -> tuple[int, int]:
    stats = provider.stats()
    return stats.hits, stats.misses


def test_repeated_prompt_does_not_run_the_encoder(gemma_dirs) -> None:
    """The encoder is freed after the first call: a cached prompt is still answered (a miss
    would raise EncoderClosedError), bit for bit the first embedding."""
    encoder = CaptionEncoder.load(gemma_dirs[0])
    provider = CaptionProvider(encoder, max_entries=8)
    first = provider.encode(["a red fox", "a lake"])
    assert first.shape == (2, encoder.max_length, encoder.embed_dim)
    torch.testing.assert_close(first, encoder.encode(["a red fox", "a lake"]), rtol=0, atol=1e-6)
    encoder.free()
    again = provider.encode(["a lake", "a red fox", "a lake"])
    assert (
        torch.equal(again[0], first[1])
        and torch.equal(again[1], first[0])
        and torch.equal(again[2], first[1])
    )
    assert counts(provider) == (3, 2)
    assert provider.stats().hit_rate == pytest.approx(3 / 5)
    with pytest.raises(EncoderClosedError):
        provider.encode(["a tree"])


def test_a_call_encodes_each_distinct_prompt_once(gemma_dirs) -> None:
    provider = CaptionProvider(gemma_dirs[0], max_entries=8)
    emb = provider.encode(["one", "two", "one", "one"])
    assert counts(provider) == (2, 2)
    assert torch.equal(emb[0], emb[2]) and torch.equal(emb[0], emb[3])
    provider.free()


def test_cache_is_bounded_least_recently_used_first(gemma_dirs) -> None:
    provider = CaptionProvider(gemma_dirs[0], max_entries=2)
    for prompt in ("one", "two", "one", "three"):  # "two" is the least recently used when "three" comes
        provider.encode([prompt])
    stats = provider.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 3, 2)
    assert stats.bytes == 2 * 300 * 32 * 4  # two [300, 32] float32 rows (tiny Gemma: D = 32)
    provider.encode(["one"])
    provider.encode(["two"])
    assert counts(provider) == (2, 4)
    provider.free()


def test_another_encoder_never_gets_the_first_ones_embeddings(gemma_dirs, monkeypatch) -> None:
    """$PIDTRT_TEXT_ENCODER names the encoder; freed after each call, the next call's encoder
    is whichever the variable names then. Same prompt, two encoders: two entries."""
    a, b = gemma_dirs
    provider = CaptionProvider(None, keep=False, max_entries=8)
    monkeypatch.setenv(TEXT_ENCODER_ENV, str(a))
    from_a = provider.encode(["a fox"])
    monkeypatch.setenv(TEXT_ENCODER_ENV, str(b))
    from_b = provider.encode(["a fox"])
    assert counts(provider) == (0, 2)
    assert not torch.equal(from_a, from_b)
    with CaptionEncoder.load(b) as direct:
        torch.testing.assert_close(from_b, direct.encode(["a fox"]), rtol=0, atol=1e-6)
    monkeypatch.setenv(TEXT_ENCODER_ENV, str(a))
    assert torch.equal(provider.encode(["a fox"]), from_a)
    assert counts(provider) == (1, 2)
    assert provider.identity().startswith(str(a.resolve()) + "@")


def test_new_weights_in_the_same_directory_are_another_encoder(gemma_dirs, tmp_path: Path) -> None:
    from tests.text_helpers import make_tiny_gemma

    path = make_tiny_gemma(tmp_path / "g", seed=0)
    provider = CaptionProvider(path, keep=False, max_entries=8)
    before = provider.identity()
    provider.encode(["a fox"])
    make_tiny_gemma(path, seed=3)  # rewritten in place
    assert provider.identity() != before
    provider.encode(["a fox"])
    assert counts(provider) == (0, 2)


def test_zero_turns_the_cache_off(gemma_dirs) -> None:
    provider = CaptionProvider(gemma_dirs[0], max_entries=0)
    provider.encode(["one", "one"])
    provider.encode(["one"])
    stats = provider.stats()
    assert (stats.hits, stats.misses, stats.entries) == (0, 3, 0)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8"])
def test_bad_cache_size_is_one_line(bad) -> None:
    with pytest.raises(ConfigError, match=r"^caption_cache=.*expected an integer >= 0 \(0: no cache\)$"):
        CaptionProvider(None, max_entries=bad)


def test_decoder_offers_the_cache(gemma_dirs) -> None:
    from pid_trt import Decoder

    with Decoder.load(
        backbone="tiny", random_weights=True, text_encoder=gemma_dirs[0], caption_cache=3
    ) as dec:
        first = dec.encode_prompts("a red fox", batch=2)
        second = dec.encode_prompts(["a red fox"])
        assert torch.equal(first[0], second[0])
        stats = dec.caption_stats()
        assert (stats.hits, stats.misses, stats.max_entries) == (2, 1, 3)
        image = dec.decode(torch.zeros(16, 1, 1), prompt="a red fox", seed=1)
        assert image.shape == (1, 3, 32, 32) and dec.caption_stats().hits == 3
    with Decoder.load(backbone="tiny", random_weights=True) as dec:
        assert dec.caption_stats().max_entries == DEFAULT_CAPTION_CACHE
    with pytest.raises(ConfigError, match="caption_cache=-2"):
        Decoder.load(backbone="tiny", random_weights=True, caption_cache=-2)


def test_server_default_is_the_decoders() -> None:
    from pid_trt.serve.config import CAPTION_CACHE, ModelOptions

    assert CAPTION_CACHE == DEFAULT_CAPTION_CACHE == ModelOptions().caption_cache
    with pytest.raises(ConfigError, match="--caption-cache -1"):
        ModelOptions(caption_cache=-1)
