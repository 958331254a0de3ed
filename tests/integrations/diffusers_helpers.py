"""Tiny random diffusers pipelines and VAEs, built offline, for the integration tests.

Every pipeline has the real latent layout of its backbone (channels, 1/8 VAE, packing) at toy
widths, and no text encoder: the tests pass ``prompt_embeds`` (see :func:`embeds`). The one
pipeline with text encoders (:func:`make_flux_dir`) gets word-level tokenizers built with the
``tokenizers`` library, so that ``DiffusionPipeline.from_pretrained(dir)`` runs from a prompt.
Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

#: Latent channels of the real VAEs (the tiny ones keep them, so shapes are the real ones).
FLUX_CH, FLUX2_CH, SDXL_CH, QWEN_CH = 16, 32, 4, 16
_WORDS = "a red fox jumps over the lazy brown dog in snow photo of mountain lake at sunset cat"


#: Toy widths of every VAE here: 4 levels (1/8), 8 channels, one layer per block.
_TOY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 8, 8),
    layers_per_block=1,
    norm_num_groups=4,
    sample_size=64,
)


def _vae_kl(channels: int, **kw):
    """An AutoencoderKL with 4 levels (1/8) and toy widths."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(latent_channels=channels, **_TOY_VAE, **kw).eval()


def flux_vae():
    return _vae_kl(FLUX_CH, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                   use_post_quant_conv=False)  # fmt: skip


def sd3_vae():
    return _vae_kl(FLUX_CH, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                   use_post_quant_conv=False)  # fmt: skip


def sdxl_vae():
    return _vae_kl(SDXL_CH, scaling_factor=0.13025)


def flux2_vae():
    """AutoencoderKLFlux2 (32 channels at 1/8, BatchNorm over the 128 patchified channels) with
    non-trivial running statistics, so the normalisation is exercised."""
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(
        latent_channels=FLUX2_CH, use_quant_conv=False, use_post_quant_conv=False, **_TOY_VAE
    ).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.randn(vae.bn.num_features, generator=gen) * 0.5)
        vae.bn.running_var.copy_(torch.rand(vae.bn.num_features, generator=gen) * 2 + 0.25)
    return vae


def qwen_vae():
    """AutoencoderKLQwenImage (16 channels at 1/8) with per-channel latent mean / std."""
    from diffusers import AutoencoderKLQwenImage

    gen = torch.Generator().manual_seed(2)
    mean = (torch.randn(QWEN_CH, generator=gen) * 0.5).tolist()
    std = (torch.rand(QWEN_CH, generator=gen) * 2 + 0.5).tolist()
    torch.manual_seed(0)
    return AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=QWEN_CH,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=mean,
        latents_std=std,
    ).eval()


def make_pipeline(backbone: str):
    """A tiny random pipeline of ``backbone`` (flux, flux2, flux2_klein, sd3, sdxl, qwenimage,
    zimage), without text encoders."""
    return _BUILDERS[backbone]()


def _flux(with_text: bool = False):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * FLUX_CH, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )  # fmt: skip
    parts = dict(text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None)
    if with_text:
        parts = _flux_text()
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=flux_vae(), transformer=transformer, **parts
    )


def _flux_text() -> dict:
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tok = _tokenizer(max_length=77)
    tok2 = _tokenizer(max_length=512)
    torch.manual_seed(0)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
            num_attention_heads=4, projection_dim=32, max_position_embeddings=77,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        )
    ).eval()  # fmt: skip
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(tok2), d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                 pad_token_id=tok2.pad_token_id, eos_token_id=tok2.eos_token_id)
    ).eval()  # fmt: skip
    return dict(text_encoder=clip, text_encoder_2=t5, tokenizer=tok, tokenizer_2=tok2)


def _tokenizer(max_length: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<bos>", "<pad>", "<eos>", "<unk>"]
    tok.train_from_iterator([_WORDS], trainer=trainers.WordLevelTrainer(special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>",
        special_tokens=[("<bos>", tok.token_to_id("<bos>")), ("<eos>", tok.token_to_id("<eos>"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=max_length, padding_side="right",
    )  # fmt: skip


def make_flux_dir(directory: Path) -> Path:
    """Save a tiny FLUX.1 pipeline with CLIP / T5 text encoders and tokenizers to ``directory``."""
    pipe = _flux(with_text=True)
    pipe.save_pretrained(directory)
    return Path(directory)


def _flux2(klein: bool = False):
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Pipeline,
        Flux2Transformer2DModel,
    )

    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4 * FLUX2_CH, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4], guidance_embeds=not klein,
    )  # fmt: skip
    cls = Flux2KleinPipeline if klein else Flux2Pipeline
    return cls(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=flux2_vae(), transformer=transformer,
        text_encoder=None, tokenizer=None,
    )  # fmt: skip


def _sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=SDXL_CH, out_channels=SDXL_CH,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64, norm_num_groups=1,
    )  # fmt: skip
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear",
        timestep_spacing="leading",
    )  # fmt: skip
    return StableDiffusionXLPipeline(
        vae=sdxl_vae(), text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet,
        scheduler=scheduler, force_zeros_for_empty_prompt=False, add_watermarker=False,
    )  # fmt: skip


def _sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=FLUX_CH, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64,
        out_channels=FLUX_CH,
    )  # fmt: skip
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=sd3_vae(),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
        tokenizer_3=None,
    )  # fmt: skip


def _qwen():
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=4 * QWEN_CH, out_channels=QWEN_CH, num_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )  # fmt: skip
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=qwen_vae(), text_encoder=None, tokenizer=None,
        transformer=transformer,
    )  # fmt: skip


def _zimage():
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=FLUX_CH, dim=32, n_layers=1,
        n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=16,
        rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[256, 32, 32],
    )  # fmt: skip
    with torch.no_grad():
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=flux_vae(), text_encoder=None, tokenizer=None,
        transformer=transformer,
    )  # fmt: skip


_BUILDERS = {
    "flux": _flux,
    "flux2": _flux2,
    "flux2_klein": lambda: _flux2(klein=True),
    "sd3": _sd3,
    "sdxl": _sdxl,
    "qwenimage": _qwen,
    "zimage": _zimage,
}


def embeds(backbone: str, seed: int = 0) -> dict:
    """Seeded random prompt embeddings for :func:`make_pipeline`'s pipeline (no text encoder)."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen)

    if backbone == "flux":
        return dict(prompt_embeds=r(1, 8, 32), pooled_prompt_embeds=r(1, 32))
    if backbone == "flux2":
        return dict(prompt_embeds=r(1, 8, 16))
    if backbone == "flux2_klein":
        return dict(prompt_embeds=r(1, 8, 16), guidance_scale=1.0)
    if backbone == "sd3":
        return dict(prompt_embeds=r(1, 8, 32), pooled_prompt_embeds=r(1, 64), guidance_scale=1.0)
    if backbone == "sdxl":
        return dict(prompt_embeds=r(1, 8, 64), pooled_prompt_embeds=r(1, 32), guidance_scale=1.0)
    if backbone == "qwenimage":
        return dict(prompt_embeds=r(1, 8, 16), prompt_embeds_mask=torch.ones(1, 8, dtype=torch.long))
    if backbone == "zimage":
        return dict(prompt_embeds=[r(8, 16)], guidance_scale=0.0)
    raise KeyError(backbone)
