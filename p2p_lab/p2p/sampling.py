"""Prompt-to-Prompt's runs on the course's one denoising loop (:func:`p2p_lab.ldm.denoise`), and
mask-based editing, the baseline that needs a mask (the fixed seed is :func:`p2p_lab.baseline.fixed_seed`).

Taught in notebooks 04 and 05. All prompts of a run start from the same z_T (one draw from the
seed, :func:`p2p_lab.ldm.initial_latents`, repeated). With guidance scale w != 1 each step runs
the batch [unconditional rows; conditional rows] and combines eps = eps_u + w (eps_c - eps_u)
(classifier-free guidance); at w = 1 only the conditional rows run. The loop's step index i
(0 .. n-1) is what the attention controls schedule tau by.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from .. import ldm
from ..unet_attention import default_latent_hw
from .options import strict_options


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
        """Classifier-free guidance: an unconditional row per conditional one (w != 1)."""
        return self.guidance_scale != 1.0


def resolve_run(pipe, seed, num_inference_steps, guidance_scale, progress: bool | None = None) -> Run:
    """Unset steps / guidance come from the model: p2p_lab.model.sampling_defaults(pipe)."""
    from ..model import sampling_defaults

    default = sampling_defaults(pipe)
    steps = default.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
    if steps < 1:
        raise ValueError(f"num_inference_steps = {steps}; use at least 1 step")
    g = default.guidance_scale if guidance_scale is None else float(guidance_scale)
    return Run(steps, g, default_latent_hw(pipe), int(seed), progress)


def shared_noise(pipe, run: Run, n_rows: int, scheduler) -> torch.Tensor:
    """z_T (n_rows, C, h, w): one draw from the run's seed (a CPU generator), repeated for every row."""
    f = pipe.vae_scale_factor
    h, w = run.latent_hw
    z = ldm.initial_latents(pipe, run.seed, 1, h * f, w * f, scheduler)  # (1, C, h, w)
    return z.repeat(n_rows, 1, 1, 1)


def run_loop(pipe, prompts, run: Run, control=None, on_step=None, latents=None, cond=None,
             start: int = 0, scheduler=None, uncond=None) -> torch.Tensor:
    """Encode (unless ``cond`` is given), draw the shared z_T, denoise with ``control`` installed
    (:func:`p2p_lab.ldm.denoise`); returns z_0. ``on_step(i, z) -> z`` after each step.
    ``scheduler``: a fresh one (:func:`p2p_lab.ldm.fresh_scheduler`), made if None. ``uncond``:
    the unconditional embedding (1, L, D) or a function of i (an inversion's); None: the empty prompt's."""
    sch = ldm.fresh_scheduler(pipe, run.num_steps) if scheduler is None else scheduler
    cond = ldm.encode_text(pipe, prompts) if cond is None else cond  # (n, L, D) or a function of i
    if not run.cfg:
        uncond = None
    elif uncond is None:
        uncond = ldm.encode_text(pipe, [""])  # (1, L, D)
    z = shared_noise(pipe, run, len(prompts), sch) if latents is None else latents
    step = None if on_step is None else (lambda i, out: on_step(i, out.prev))
    return ldm.denoise(pipe, z, cond, uncond, sch, run.guidance_scale, control=control, on_step=step,
                       start=start, progress=run.progress)


def images(pipe, z0: torch.Tensor) -> np.ndarray:
    """Latents (n, C, h, w) -> images (n, H, W, 3) float32 in [0, 1] (:func:`p2p_lab.ldm.decode`)."""
    return ldm.to_numpy(ldm.decode(pipe, z0))


def prompt_list(prompts, what: str = "prompts") -> list[str]:
    """A prompt or a list of them -> a list of non-empty strings (TypeError / ValueError naming the fix)."""
    return ldm.prompt_list(prompts, what, nonempty=True)


@strict_options
def record_maps(pipe, prompts, store, *, seed: int = 0, num_inference_steps: int | None = None,
                guidance_scale: float | None = None, latents=None, progress: bool | None = None) -> np.ndarray:
    """Sample every prompt from the same z_T and record their attention maps into ``store`` (an
    :class:`~p2p_lab.p2p.AttentionStore`): images (n, H, W, 3) float32 in [0, 1].

    ``latents``: your own z_T (n, C, h, w), already scaled. ``progress``: a progress bar
    (default: on for Stable Diffusion, off for the shipped model).
    """
    from .controls import StoreControl

    prompts = prompt_list(prompts)
    run = resolve_run(pipe, seed, num_inference_steps, guidance_scale, progress)
    return images(pipe, run_loop(pipe, prompts, run, StoreControl(store, run.latent_hw), latents=latents))


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
    m = latent_mask(mask, run.latent_hw, ldm.pipe_device(pipe)).to(ldm.pipe_dtype(pipe))

    def keep_outside(i, z):  # z (2, C, h, w): row 0 source, row 1 target
        return torch.cat([z[:1], m * z[1:] + (1 - m) * z[:1]])

    return images(pipe, run_loop(pipe, [source, target], run, on_step=keep_outside))
