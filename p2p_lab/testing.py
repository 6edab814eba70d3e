"""Models for tests: Stable Diffusion v1's exact topology at a tiny width, with random weights.

Layer names, block types, layer counts per block, head counts, ``cross_attention_dim=768`` and the
77-token prompt length are SD v1's, so code that runs here runs on ``CompVis/stable-diffusion-v1-4``
with the same layer names and the same attention-map resolutions relative to the latent (64, 32,
16, 8 at 512 px). Only the channel widths and the text encoder's depth are cut, and the tokenizer is
the shapes world's BPE (the CLIP vocabulary cannot be downloaded here), padded to 77 tokens.
"""
from __future__ import annotations

import tempfile

import torch

SD_V1_MAX_LENGTH = 77
SD_V1_CROSS_DIM = 768


def sd_like_pipeline(seed: int = 0, latent_size: int = 16, width: int = 32):
    """A ``StableDiffusionPipeline`` with SD v1's UNet/VAE topology, random weights, on CPU.

    ``latent_size`` is the UNet's sample size (SD v1: 64 for 512 px images); ``width`` the first
    block's channels (SD v1: 320; later blocks use SD's ratios 1:2:4:4, capped for speed).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .model import assemble_pipeline, build_scheduler
    from .tokenizer import build_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(width, 2 * width, 2 * width, 2 * width),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                          "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=SD_V1_CROSS_DIM, attention_head_dim=8, norm_num_groups=min(32, width))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(width, width, 2 * width, 2 * width), norm_num_groups=min(32, width),
        sample_size=latent_size * 8, scaling_factor=0.18215)
    tokenizer = build_tokenizer(tempfile.mkdtemp(prefix="p2p_bpe_"))
    tokenizer.model_max_length = SD_V1_MAX_LENGTH
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=SD_V1_CROSS_DIM, intermediate_size=256,
        num_hidden_layers=1, num_attention_heads=12, max_position_embeddings=SD_V1_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    pipe = assemble_pipeline(vae.eval(), text.eval(), tokenizer, unet.eval(), build_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe
