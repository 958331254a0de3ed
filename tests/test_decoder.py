"""``pid_trt.Decoder``: golden parity on torch and ONNX Runtime, the backend cache, threads,
input validation by the latent file's rules, and lifetime."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import pid_trt.decoder as decoder_module
from pid_trt import Decoder
from pid_trt.checkpoints import CONFIG_METADATA_KEY
from pid_trt.errors import ConfigError, InputFileError, PidTrtError
from pid_trt.io import sample_latent
from pid_trt.verify.golden import load_golden
from tests.conftest import golden_case

TORCH_TOL = 1e-4  # golden README: torch reference, float32, CPU
ORT_TOL = 1e-3  # golden README: ONNX Runtime, float32 graph, CPU


def _golden_decoder_inputs(name: str, tmp: Path):
    """(checkpoint path, latent, caption, sigma, noise draws, expected image) of a golden case."""
    case = load_golden(golden_case(name))
    t = case.tensors
    ckpt = tmp / "ckpt.safetensors"
    weights = {k.removeprefix("weights/"): v.contiguous() for k, v in t.items() if k.startswith("weights/")}
    save_file(weights, str(ckpt), metadata={CONFIG_METADATA_KEY: case.config.to_json()})
    noise = [t[f"sampler/noise{i}"] for i in range(4)]
    return ckpt, t["in/lq_latent"], t["in/y"], t["in/degrade_sigma"], noise, t["out/image"]


@pytest.mark.parametrize(
    "backend, tol",
    # ONNX Runtime against the golden image stays quick in tests/backends/test_ort_parity.py (through the CLI)
    [("torch", TORCH_TOL), pytest.param("onnxruntime", ORT_TOL, marks=pytest.mark.slow)],
    ids=["torch", "onnxruntime"],
)
def test_decode_matches_golden_image(backend: str, tol: float, tmp_path: Path) -> None:
    ckpt, latent, caption, sigma, noise, expected = _golden_decoder_inputs("v1_flux_wide_b2", tmp_path)
    with Decoder.load(checkpoint=ckpt, backend=backend, export_dir=tmp_path / "export") as dec:
        image = dec.decode(latent, caption, degrade_sigma=sigma, noise=noise)
    assert image.dtype == torch.float32 and image.shape == expected.shape
    assert (image - expected).abs().max().item() <= tol


def test_numpy_inputs_and_unbatched_latent_equal_torch_inputs() -> None:
    lat = sample_latent(_tiny().config, 1, 64, 64, seed=3)
    with Decoder.load(backbone="tiny", random_weights=True) as dec:
        a = dec.decode(lat.latent, lat.caption, seed=5)
        b = dec.decode(lat.latent[0].numpy(), lat.caption[0].numpy(), degrade_sigma=np.float32(0.0), seed=5)
    assert torch.equal(a, b)
    assert a.shape == (1, 3, 64, 64) and a.abs().max() <= 1.0


# slow: two ONNX exports (~31 s idle); the LRU rule stays quick in tests/backends/test_cache.py
@pytest.mark.slow
def test_mixed_sizes_reuse_backends_and_evict_lru(tmp_path: Path, monkeypatch) -> None:
    """Two sizes on ONNX Runtime: each exported once, weights built once, LRU bound kept."""
    built = []
    real_build = decoder_module.build_model
    monkeypatch.setattr(decoder_module, "build_model", lambda spec: built.append(1) or real_build(spec))
    dec = Decoder.load(
        backbone="tiny", random_weights=True, backend="onnxruntime", export_dir=tmp_path, max_backends=2
    )
    cfg = dec.config
    small = sample_latent(cfg, 1, 64, 64, seed=1)
    wide = sample_latent(cfg, 1, 64, 96, seed=2)
    first = dec.decode(small.latent, small.caption)
    dec.decode(wide.latent, wide.caption)
    assert dec.cached_sizes() == [(64, 64, 1), (64, 96, 1)]
    exports = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    again = dec.decode(small.latent, small.caption)  # cached: no new export, same image
    assert torch.equal(first, again)
    assert (
        sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")) == exports
        and len(exports) == 2
    )
    assert len(built) == 1  # the weights were read once for both exports
    dec.decode(sample_latent(cfg, 2, 64, 64).latent, sample_latent(cfg, 2, 64, 64).caption)
    assert dec.cached_sizes() == [(64, 64, 1), (64, 64, 2)]  # (64, 96, 1) was the least recent
    dec.close()
    assert dec.cached_sizes() == []
    with pytest.raises(ConfigError, match="closed"):
        dec.decode(small.latent, small.caption)


# The quick tier runs the torch case; the ONNX Runtime one (the same locking, another backend) is full suite only.
@pytest.mark.parametrize("backend", ["torch", pytest.param("onnxruntime", marks=pytest.mark.slow)])
def test_concurrent_decodes_equal_sequential(backend: str, tmp_path: Path) -> None:
    """Eight threads, two sizes, four seeds: every result equals the same decode run alone."""
    dec = Decoder.load(
        backbone="tiny", random_weights=True, backend=backend, export_dir=tmp_path, max_backends=1
    )
    cfg = dec.config
    jobs = [(sample_latent(cfg, 1, 64, 64 + 32 * (i % 2), seed=i), i) for i in range(8)]
    expected = [dec.decode(lat.latent, lat.caption, seed=seed) for lat, seed in jobs]
    got: list[torch.Tensor | BaseException | None] = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def work(i: int) -> None:
        lat, seed = jobs[i]
        barrier.wait(timeout=60)
        try:
            got[i] = dec.decode(lat.latent, lat.caption, seed=seed)
        except BaseException as exc:  # reported below
            got[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert isinstance(g, torch.Tensor), f"job {i}: {g!r}"
        assert torch.equal(g, e), f"job {i} differs"
    dec.close()


def _tiny() -> Decoder:
    return Decoder.load(backbone="tiny", random_weights=True)


@pytest.mark.parametrize(
    "latent, kwargs, match",
    [
        (torch.full((16, 4, 4), float("nan")), {}, "256 NaN/Inf"),
        (torch.zeros(8, 4, 4), {}, "8 channels, expected 16"),
        (torch.zeros(1, 16, 4, 4), {"caption_embedding": torch.zeros(1, 8, 7)}, "width 7, expected 32"),
        (torch.zeros(1, 16, 4, 4), {"caption_embedding": torch.zeros(1, 3, 32)}, "3 tokens"),
        (torch.zeros(1, 16, 4, 4), {"degrade_sigma": 1.5}, r"degrade_sigma 1.5 is outside \[0, 1\]"),
        (torch.zeros(2, 16, 4, 4), {"degrade_sigma": torch.zeros(3)}, "batch 3 but latent has batch 2"),
        (torch.zeros(1, 16, 4, 4, dtype=torch.int64), {}, "expected a float tensor"),
        (torch.zeros(16, 4), {}, r"expected \[B, C, h, w\] or \[C, h, w\]"),
        (torch.zeros(1, 16, 4, 4), {"size": "100x64"}, "--size 100x64"),
        (torch.zeros(1, 16, 4, 4), {"noise": [torch.zeros(1, 3, 64, 64)] * 3}, r"expected \[S, B, 3, H, W\]"),
        (torch.zeros(1, 16, 4, 4), {"steps": 0}, "steps=0"),
        (torch.zeros(1, 16, 4, 4), {"prompt": "x", "caption_embedding": torch.zeros(8, 32)}, "not both"),
    ],
)
def test_bad_input_is_one_line_error(latent, kwargs, match: str) -> None:
    with _tiny() as dec, pytest.raises(PidTrtError, match=match) as info:
        dec.decode(latent, **kwargs)
    assert "\n" not in str(info.value)


def test_released_preset_needs_a_caption_and_prompt_needs_an_encoder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(decoder_module.TEXT_ENCODER_ENV, raising=False)
    ckpt, latent, *_ = _golden_decoder_inputs("v1_flux_square", tmp_path)
    with Decoder.load(checkpoint=ckpt) as dec:
        with pytest.raises(InputFileError, match="no caption"):
            dec.decode(latent)
        with pytest.raises(ConfigError, match="--text-encoder DIR"):
            dec.decode(latent, prompt="a red fox")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"backend": "tensorflow"}, "--backend 'tensorflow' is not known"),
        ({"precision": "int4"}, "--precision 'int4' is not known"),
        ({"device": "tpu"}, "expected cpu or cuda"),
        ({"backend": "tensorrt", "device": "cpu"}, "tensorrt backend runs on cuda"),
        ({"max_backends": 0}, "max_backends=0"),
        ({"random_weights": False}, "no weights given"),
        ({"net_config": {"no_such_argument": 1}}, "unknown argument"),
    ],
)
def test_bad_load_options(kwargs: dict, match: str) -> None:
    args = {"backbone": "tiny", "random_weights": True, **kwargs}
    if "net_config" in kwargs:
        del args["backbone"]
    with pytest.raises(PidTrtError, match=match):
        Decoder.load(**args)


def test_net_config_as_dict_equals_preset() -> None:
    from pid_trt.config import TINY

    lat = sample_latent(TINY, seed=4)
    with _tiny() as a, Decoder.load(net_config=TINY.to_upstream(), random_weights=True) as b:
        assert torch.equal(a.decode(lat.latent, lat.caption), b.decode(lat.latent, lat.caption))


def test_prompt_is_encoded_by_the_text_encoder(tmp_path: Path) -> None:
    from pid_trt.text import CaptionEncoder
    from tests.text_helpers import make_tiny_gemma

    gemma = make_tiny_gemma(tmp_path / "gemma")
    lat = sample_latent(_tiny().config, batch=2, seed=6)
    prompts = ["a red fox in snow", "photo of mountain lake at sunset"]
    with CaptionEncoder.load(gemma) as enc:
        captions = enc.encode(prompts)
    with Decoder.load(backbone="tiny", random_weights=True, text_encoder=gemma) as dec:
        by_prompt = dec.decode(lat.latent, prompt=prompts, seed=1)
        by_embedding = dec.decode(lat.latent, captions, seed=1)
        assert torch.equal(by_prompt, by_embedding)
        one = dec.decode(lat.latent, prompt=prompts[0], seed=1)  # one prompt: every row
        assert torch.equal(one[0], by_prompt[0]) and not torch.equal(one[1], by_prompt[1])
        with pytest.raises(ConfigError, match="3 prompts for a latent of batch 2"):
            dec.decode(lat.latent, prompt=prompts + ["a dog"])


def test_tiling_options_or_the_keyword_shim() -> None:
    """``decode(tiling=TileOptions(...))`` is the decode the six keywords describe, bit for bit,
    and so is its plan; a keyword off its default beside ``tiling=`` is refused in one line."""
    from pid_trt.tiling import TileOptions

    lat = sample_latent(_tiny().config, 1, 64, 96, seed=6)
    options = TileOptions.create(tiles="2x1", tile_batch=2)
    with Decoder.load(backbone="tiny", random_weights=True) as dec:
        by_keywords = dec.decode(lat.latent, lat.caption, seed=2, tiles="2x1", tile_batch=2)
        by_options = dec.decode(lat.latent, lat.caption, seed=2, tiling=options)
        assert dec.plan(64, 96, tiling=options) == dec.plan(64, 96, tiles="2x1", tile_batch=2)
        assert dec.plan(64, 96, tiling=options).grid.count == 2
        with pytest.raises(ConfigError) as err:
            dec.decode(lat.latent, lat.caption, tiling=options, tile_batch=4)
    assert torch.equal(by_options, by_keywords)
    assert str(err.value) == "tiling= with tile_batch: give a TileOptions or the tiling keywords, not both"
