"""The shipped model: its architecture, how it is assembled, and one loader for every notebook.

Taught in notebook 04. The shipped model is a standard diffusers ``StableDiffusionPipeline`` made of
the same classes as Stable Diffusion v1 (``AutoencoderKL``, ``UNet2DConditionModel`` with
cross-attention, ``CLIPTextModel`` + ``CLIPTokenizer``, a DDIM scheduler), only much smaller, so that
it samples in well under a second on a laptop CPU.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "data" / "shapes-ldm"
SD_V1 = "CompVis/stable-diffusion-v1-4"
PIPELINE_PARTS = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclasses.dataclass
class ModelConfig:
    """Sizes of the shipped model (32x32 RGB images, 4x8x8 latents)."""

    image_size: int = 32
    vae_channels: tuple[int, ...] = (16, 32, 32)  # three levels: 32 -> 8 pixels (factor 4)
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64)  # cross-attention at 8x8 and 4x4 (+ mid block)
    unet_heads: int = 4
    text_width: int = 64  # = cross_attention_dim
    text_layers: int = 3
    text_heads: int = 4
    max_length: int = 16  # tokens per prompt, padded


def build_vae(cfg: ModelConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=cfg.vae_channels, layers_per_block=1,
                         norm_num_groups=16, sample_size=cfg.image_size)


def build_text_encoder(cfg: ModelConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    conf = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=cfg.text_width,
                          intermediate_size=4 * cfg.text_width, num_hidden_layers=cfg.text_layers,
                          num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.max_length,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, projection_dim=cfg.text_width)
    return CLIPTextModel(conf)


def build_unet(cfg: ModelConfig):
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    latent = cfg.image_size // 2 ** (len(cfg.vae_channels) - 1)
    return UNet2DConditionModel(sample_size=latent, in_channels=cfg.latent_channels,
                                out_channels=cfg.latent_channels,
                                down_block_types=("CrossAttnDownBlock2D",) * n,
                                up_block_types=("CrossAttnUpBlock2D",) * n,
                                block_out_channels=cfg.unet_channels, layers_per_block=1,
                                cross_attention_dim=cfg.text_width,
                                attention_head_dim=cfg.unet_heads,  # diffusers reads this as heads
                                norm_num_groups=16)


def build_scheduler():
    """DDIM with Stable Diffusion v1's noise schedule (scaled-linear betas, 1000 steps)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1)


def assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler=None):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler or build_scheduler(),
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@dataclasses.dataclass(frozen=True)
class SamplingDefaults:
    num_inference_steps: int
    guidance_scale: float
    # Prompt-to-Prompt: the fraction of steps in which a target's unchanged tokens keep the source's
    # text embeddings (p2p_lab.p2p.edit's ``context_tau``; its docstring says why)
    context_tau: float = 0.0


SHAPES_DEFAULTS = SamplingDefaults(num_inference_steps=20, guidance_scale=4.0, context_tau=0.5)
SD_DEFAULTS = SamplingDefaults(num_inference_steps=50, guidance_scale=7.5, context_tau=0.0)


def is_shapes_model(pipe) -> bool:
    """True for a shapes-world pipeline (16-token prompts), False for Stable Diffusion and others."""
    return pipe.tokenizer.model_max_length == ModelConfig.max_length


def sampling_defaults(pipe) -> SamplingDefaults:
    """Default steps and guidance: 20 DDIM steps at guidance 4 for the shipped model, SD's 50 / 7.5
    otherwise; and for how many steps Prompt-to-Prompt keeps the unchanged tokens' context (``context_tau``:
    0 for Stable Diffusion, as in the paper; 0.5 for the shipped model, which was trained with decoy
    contexts (``p2p_lab.train.decoy_caption``) and edits best so in ``benchmarks/p2p_eval.py``)."""
    return SHAPES_DEFAULTS if is_shapes_model(pipe) else SD_DEFAULTS


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"model folder {folder} does not exist. The shipped model lives in data/shapes-ldm of the "
            f"p2p_lab repository; run from a full checkout, or retrain it with "
            f"`python -m p2p_lab train`.")
    missing = [p for p in PIPELINE_PARTS if not (folder / p).exists()]
    if missing:
        raise FileNotFoundError(f"model folder {folder} is incomplete: missing {missing}. Restore it "
                                f"from git (`git checkout -- {folder}`) or retrain it.")


def load_pipeline(model: str | os.PathLike | None = None, device: str | None = None,
                  dtype: torch.dtype | None = None):
    """The shipped shapes-world pipeline by default, or a diffusers model by folder or hub id.

    ``model``: None (the shipped model), a local pipeline folder, or a hub id such as
    ``"CompVis/stable-diffusion-v1-4"``. ``device``: picked automatically (CUDA, then MPS, then
    CPU). ``dtype``: float16 on CUDA, float32 elsewhere. The progress bar is switched off.
    """
    from diffusers import StableDiffusionPipeline

    device = device or default_device()
    dtype = dtype or (torch.float16 if str(device).startswith("cuda") else torch.float32)
    path = Path(model) if model is not None else SHIPPED_MODEL
    is_local = model is None or path.exists() or str(model).startswith((".", "/", "~"))
    if is_local:
        _check_folder(path)
        pipe = StableDiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype,
                                                       local_files_only=True)
    else:
        try:
            pipe = StableDiffusionPipeline.from_pretrained(str(model), torch_dtype=dtype,
                                                           safety_checker=None,
                                                           requires_safety_checker=False)
        except OSError as err:
            raise OSError(
                f"could not load {model!r}: no local folder has that name, and the Hugging Face Hub "
                f"could not be reached or has no such model ({type(err).__name__}). A hub id needs the network (and, for some models, a login with `huggingface-cli login`). "
                f"Offline, use the shipped model: load_pipeline() with no argument.") from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
