"""The sampling driver: our own denoising loop, plain sampling, the fixed-seed and mask baselines.

Taught in notebooks 04 and 05. All prompts of a call start from the same z_T. With guidance
scale s > 1 each step runs the batch [unconditional rows; conditional rows] and combines
eps = eps_u + s (eps_c - eps_u) (classifier-free guidance); with s <= 1 only the conditional rows
run. The loop's step index i (0 .. n-1) is what the attention controls schedule tau by.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from .align import check_length
from .options import strict_options
from .processor import attention_control, default_latent_hw



@dataclasses.dataclass
class Run:
    """One sampling run's settings, resolved from the call's options and the pipeline."""

    num_steps: int
    guidance_scale: float
    latent_hw: tuple[int, int]
    seed: int
    progress: bool | None = None  # a progress bar; None: on for Stable Diffusion, off for the shipped model

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0


def resolve_run(pipe, seed, num_inference_steps, guidance_scale, progress: bool | None = None) -> Run:
    """Unset steps / guidance come from the model: p2p_lab.model.sampling_defaults(pipe)."""
    from ..model import sampling_defaults

    default = sampling_defaults(pipe)
    steps = default.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
    if steps < 1:
        raise ValueError(f"num_inference_steps = {steps}; use at least 1 step")
    g = default.guidance_scale if guidance_scale is None else float(guidance_scale)
    return Run(steps, g, default_latent_hw(pipe), int(seed), progress)


def _device_dtype(pipe):
    p = next(pipe.unet.parameters())
    return p.device, p.dtype


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """Text embeddings (n, L, D), L = the tokenizer's own model_max_length."""
    for p in prompts:
        check_length(pipe.tokenizer, p)
    tok = pipe.tokenizer
    ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length,
              truncation=True, return_tensors="pt").input_ids
    device, dtype = _device_dtype(pipe)
    return pipe.text_encoder(ids.to(device))[0].to(dtype)  # (n, L, D)


def make_scheduler(pipe, num_steps: int):
    """A fresh copy of the pipeline's scheduler, set to ``num_steps`` (the pipe's is not touched)."""
    sch = type(pipe.scheduler).from_config(pipe.scheduler.config)
    device, _ = _device_dtype(pipe)
    sch.set_timesteps(num_steps, device=device)
    return sch


def initial_noise(pipe, run: Run, n_rows: int, scheduler) -> torch.Tensor:
    """z_T (n_rows, C, h, w): one draw from ``seed`` (on the CPU, so every device agrees), repeated."""
    device, dtype = _device_dtype(pipe)
    g = torch.Generator("cpu").manual_seed(run.seed)
    z = torch.randn(1, pipe.unet.config.in_channels, *run.latent_hw, generator=g)
    return (z * scheduler.init_noise_sigma).to(device, dtype).repeat(n_rows, 1, 1, 1)


@torch.no_grad()
def denoise(pipe, cond, uncond, z, scheduler, run: Run, control=None, on_step=None, start: int = 0) -> torch.Tensor:
    """The reverse loop z_T -> z_0. ``control.step`` is set to the loop index before each UNet call;
    ``on_step(i, z)`` may change the latents after each scheduler step. ``start``: the loop index
    to begin at, ``z`` being the latents before that step (for schedulers without multistep state).
    A progress bar shows where ``run.progress`` asks for one (None: on for Stable Diffusion)."""
    from ..ldm import progress_bar

    steps = list(enumerate(scheduler.timesteps))[start:]
    for i, t in progress_bar(pipe, steps, len(steps), enabled=run.progress):
        c = cond(i) if callable(cond) else cond  # a callable: text embeddings that change by step
        emb = torch.cat([uncond.expand(len(c), -1, -1), c]) if run.cfg else c
        if control is not None:
            control.step = i
        x = torch.cat([z, z]) if run.cfg else z
        x = scheduler.scale_model_input(x, t)
        eps = pipe.unet(x, t, encoder_hidden_states=emb).sample
        if run.cfg:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + run.guidance_scale * (eps_c - eps_u)
        z = scheduler.step(eps, t, z).prev_sample
        if on_step is not None:
            z = on_step(i, z)
    return z


@torch.no_grad()
def decode(pipe, z) -> np.ndarray:
    """Latents (n, C, h, w) -> images (n, H, W, 3) float32 in [0, 1]."""
    x = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()


def run_loop(pipe, prompts, run: Run, control=None, on_step=None, latents=None, cond=None,
             start: int = 0, scheduler=None) -> torch.Tensor:
    """Encode (unless ``cond`` is given), draw z_T, denoise under ``control`` (installed for the
    loop only); returns z_0. ``scheduler``: a fresh one from ``make_scheduler`` (made if None)."""
    sch = make_scheduler(pipe, run.num_steps) if scheduler is None else scheduler
    cond = encode_prompts(pipe, prompts) if cond is None else cond
    uncond = encode_prompts(pipe, [""]) if run.cfg else None
    z = initial_noise(pipe, run, len(prompts), sch) if latents is None else latents
    if control is None:
        return denoise(pipe, cond, uncond, z, sch, run, None, on_step, start)
    control.n_uncond = len(prompts) if run.cfg else 0
    with attention_control(pipe.unet, control):
        return denoise(pipe, cond, uncond, z, sch, run, control, on_step, start)


def _prompt_list(prompts) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be a string or a non-empty list of strings, got {prompts!r}")
    return prompts


@strict_options
def sample(pipe, prompts, *, seed: int = 0, num_inference_steps: int | None = None,
           guidance_scale: float | None = None, store=None, latents=None,
           progress: bool | None = None) -> np.ndarray:
    """Plain sampling of every prompt from the same z_T: images (n, H, W, 3) float32 in [0, 1].

    ``store``: an AttentionStore to fill. ``latents``: your own z_T (n, C, h, w), already scaled.
    ``progress``: a progress bar (default: on for Stable Diffusion, off for the shipped model).
    """
    from .controls import StoreControl

    prompts = _prompt_list(prompts)
    run = resolve_run(pipe, seed, num_inference_steps, guidance_scale, progress)
    control = None if store is None else StoreControl(store, run.latent_hw, 0)
    return decode(pipe, run_loop(pipe, prompts, run, control, latents=latents))


@strict_options
def fixed_seed(pipe, source: str, targets, *, seed: int = 0, num_inference_steps: int | None = None,
               guidance_scale: float | None = None, progress: bool | None = None) -> np.ndarray:
    """The baseline: source and targets from the same z_T, no attention control. (1 + T, H, W, 3)."""
    return sample(pipe, [source, *_prompt_list(targets)], seed=seed,
                  num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                  progress=progress)


def latent_mask(mask, latent_hw, device) -> torch.Tensor:
    """Image-space mask (H, W) -> latent mask (1, 1, h, w): a latent pixel is editable if any of
    its image pixels is."""
    m = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
    if m.ndim != 2:
        raise ValueError(f"mask must be an (H, W) array in image space, got shape {tuple(m.shape)}")
    m = F.adaptive_max_pool2d(m[None, None], latent_hw)  # (1, 1, h, w)
    return (m > 0).float().to(device)


@strict_options
def mask_blend(pipe, source: str, target: str, mask, *, seed: int = 0,
               num_inference_steps: int | None = None, guidance_scale: float | None = None,
               progress: bool | None = None) -> np.ndarray:
    """Mask-based editing (blended latent diffusion): outside ``mask`` the target's latent follows
    the source's trajectory, z*_t <- m z*_t + (1 - m) z_t after every step. Images (2, H, W, 3)."""
    run = resolve_run(pipe, seed, num_inference_steps, guidance_scale, progress)
    device, dtype = _device_dtype(pipe)
    m = latent_mask(mask, run.latent_hw, device).to(dtype)

    def keep_outside(i, z):  # z (2, C, h, w): row 0 source, row 1 target
        return torch.cat([z[:1], m * z[1:] + (1 - m) * z[:1]])

    return decode(pipe, run_loop(pipe, [source, target], run, on_step=keep_outside))
