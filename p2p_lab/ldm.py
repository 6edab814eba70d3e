"""Latent diffusion sampling written out: prompt -> text embeddings, z_T -> z_0, z_0 -> image.

Taught in notebook ``04_ldm_sampling``. Notation follows the course:

* ``z_t`` are latents (the autoencoder's space), ``z_T ~ N(0, I)`` the start, ``z_0`` the end;
  the decoder turns ``z_0`` into an image ``x``.
* ``eps`` is the UNet's noise prediction, ``eps_cond`` with the prompt, ``eps_uncond`` with the
  empty prompt ``""``; classifier-free guidance combines them with the scale ``w``.
* ``t`` here is a diffusers timestep (``0..999``, counting down while sampling), exactly the value
  the scheduler hands out in ``scheduler.timesteps``. (Notebook 03 counts ``1..T``; ``t = k + 1``.)

Every function takes the pipeline (or its parts) and reads device and dtype from it, so the same
code runs on the shipped model on a CPU (float32) and on Stable Diffusion v1 on a GPU (float16).
The hand-written :func:`sample` reproduces ``pipe(...)`` for the same seed, steps and guidance.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import operator

import numpy as np
import torch

from .ddpm import add_noise, x0_from_noise
from .unet_attention import attention_layers  # noqa: F401  (notebook 04: the UNet's attention layers)

__all__ = [
    "pipe_device", "pipe_dtype", "with_scheduler",
    "tokenize", "encode_text", "PromptEmbeddings", "encode_prompt",
    "guidance", "predict_x0", "abar_pair", "ddim_step", "ddim_inverse_step", "StepOutput",
    "guided_eps", "denoise_step", "sampling_step",
    "latent_shape", "initial_latents", "SampleOutput", "progress_bar", "denoise", "sample",
    "fresh_scheduler",
    "decode", "encode", "image_to_tensor", "to_numpy",
    "attention_layers", "LatentCost", "latent_cost", "seconds_per_image", "prompt_list",
]

Tensor = torch.Tensor


# ---------------------------------------------------------------- device and dtype

def pipe_device(pipe) -> torch.device:
    """Where the pipeline computes (diffusers' own notion, which also handles CPU offloading)."""
    return getattr(pipe, "_execution_device", None) or pipe.device


def pipe_dtype(pipe) -> torch.dtype:
    """The UNet's dtype: float32 on a CPU, usually float16 on a GPU."""
    return pipe.unet.dtype


def with_scheduler(pipe, scheduler_cls):
    """The same pipeline (same modules, no copies) with a fresh scheduler of another class.

    ``scheduler_cls`` is a diffusers scheduler class, e.g. ``DDPMScheduler``; it gets the same
    noise schedule (betas) from the pipeline's scheduler config.
    """
    from .model import pipeline_class

    parts = dict(pipe.components, scheduler=scheduler_cls.from_config(pipe.scheduler.config))
    new = pipeline_class()(**parts, requires_safety_checker=False)
    new.set_progress_bar_config(disable=True)
    return new


def fresh_scheduler(pipe, num_inference_steps: int):
    """A new scheduler of the pipeline's class and config (or of a scheduler's), set to
    ``num_inference_steps`` on the pipeline's device. The original is not touched, so runs never
    interfere with each other or with ``pipe(...)``."""
    original = getattr(pipe, "scheduler", pipe)
    scheduler = type(original).from_config(original.config)
    device = pipe_device(pipe) if hasattr(pipe, "unet") else None
    T = scheduler.config.num_train_timesteps
    try:
        n = None if isinstance(num_inference_steps, bool) else operator.index(num_inference_steps)
    except TypeError:
        n = None
    if n is None or not 1 <= n <= T:
        raise ValueError(f"the number of sampling steps must be a whole number from 1 to {T} (the "
                         f"model's training steps), got {num_inference_steps!r}")
    scheduler.set_timesteps(n, device=device)
    if int(scheduler.timesteps.max()) >= T:  # 'leading' spacing with steps_offset 1 at n = T
        raise ValueError(f"{num_inference_steps} steps ask this scheduler for timestep "
                         f"{int(scheduler.timesteps.max())}, past the last trained one ({T - 1}): its "
                         f"steps_offset shifts every timestep by {scheduler.config.get('steps_offset', 0)}; use at "
                         f"most {T - 1} steps")
    return scheduler


# ---------------------------------------------------------------- the prompt model

def prompt_list(prompt, what: str = "prompt", nonempty: bool = False) -> list[str]:
    """A prompt or a list of prompts -> a list of strings; TypeError otherwise. ``nonempty``: an
    empty (or blank) prompt is a ValueError too (the edit's targets; the empty prompt "" is
    otherwise the unconditional one)."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not (isinstance(prompts, (list, tuple)) and prompts and all(isinstance(p, str) for p in prompts)):
        raise TypeError(f"{what} must be a string or a non-empty list of strings, got {prompt!r}")
    blank = [p for p in prompts if not p.strip()]
    if nonempty and blank:
        raise ValueError(f"{what} holds the empty prompt {blank[0]!r}; give it some words "
                         f"(the empty prompt is the unconditional one)")
    return list(prompts)


def tokenize(tokenizer, prompt) -> Tensor:
    """Token ids padded to the tokenizer's fixed length ``model_max_length``. Shape (batch, L).

    CLIP's convention: a start token, the prompt's tokens, an end token, then padding (CLIP pads
    with the end token) up to L (16 for the shipped model, 77 for Stable Diffusion). A prompt
    longer than L raises ValueError instead of being cut silently.
    """
    prompts = prompt_list(prompt)
    L = tokenizer.model_max_length
    for p in prompts:
        n = len(tokenizer(p).input_ids)  # start + words + end
        if n > L:
            raise ValueError(f"prompt {p!r} has {n} tokens (start and end included) but this model "
                             f"reads at most {L}; shorten the prompt")
    ids = tokenizer(prompts, padding="max_length", max_length=L, truncation=True,
                    return_tensors="pt").input_ids
    return ids  # (batch, L)


@torch.no_grad()
def encode_text(pipe, prompt) -> Tensor:
    """The text encoder's last hidden states for the padded prompt(s). Shape (batch, L, D).

    The UNet's cross-attention reads these L vectors as keys and values (notebook 02).
    """
    ids = tokenize(pipe.tokenizer, prompt).to(pipe_device(pipe))  # (batch, L)
    hidden = pipe.text_encoder(ids)[0]  # (batch, L, D): last_hidden_state
    return hidden.to(dtype=pipe.text_encoder.dtype)


@dataclasses.dataclass
class PromptEmbeddings:
    """Text embeddings for classifier-free guidance: the prompt's and the empty prompt's."""

    cond: Tensor  # (batch, L, D) from the prompt
    uncond: Tensor  # (batch, L, D) from "" (or a negative prompt)

    def both(self) -> Tensor:
        """``cat([uncond, cond])``, shape (2 batch, L, D): the order diffusers uses."""
        return torch.cat([self.uncond, self.cond])


def encode_prompt(pipe, prompt, negative_prompt: str = "") -> PromptEmbeddings:
    """Embeddings of the prompt(s) and of the unconditional prompt ``""`` (one per prompt)."""
    prompts = prompt_list(prompt)
    if not isinstance(negative_prompt, str):
        raise TypeError(f"negative_prompt must be a string (used for every prompt), got {negative_prompt!r}")
    cond = encode_text(pipe, prompts)  # (batch, L, D)
    uncond = encode_text(pipe, [negative_prompt] * len(prompts))  # (batch, L, D)
    return PromptEmbeddings(cond, uncond)


# ---------------------------------------------------------------- one sampling step

def guidance(eps_uncond: Tensor, eps_cond: Tensor, guidance_scale: float) -> Tensor:
    """Classifier-free guidance: ``eps = eps_uncond + w (eps_cond - eps_uncond)``.

    ``w = 1`` gives the conditional prediction, ``w = 0`` the unconditional one, ``w > 1``
    extrapolates away from the unconditional prediction (Stable Diffusion's default is 7.5).
    """
    if eps_uncond.shape != eps_cond.shape:
        raise ValueError(f"eps_uncond {tuple(eps_uncond.shape)} and eps_cond {tuple(eps_cond.shape)} "
                         f"must have the same shape")
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def predict_x0(scheduler, z_t: Tensor, eps: Tensor, t) -> Tensor:
    """The model's guess of the clean latent: ``z_0 = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``.

    Property 1 of notebook 03 solved for z_0 (``p2p_lab.ddpm.x0_from_eps`` with our t = k + 1), with
    ``abar`` read from the scheduler at diffusers timestep ``t``. Valid for the DDPM/DDIM family,
    whose samples are ``z_t`` itself (``init_noise_sigma == 1``).
    """
    abar_t = scheduler.alphas_cumprod[int(t)].to(device=z_t.device, dtype=torch.float32)
    return x0_from_noise(z_t.float(), eps.float(), abar_t).to(z_t.dtype)


def abar_pair(scheduler, t) -> tuple[Tensor, Tensor]:
    """(abar_t, abar_prev) of a DDIM step from diffusers timestep ``t`` to the scheduler's previous
    one, t - T / n (``final_alpha_cumprod`` below 0: the last step lands on z_0)."""
    prev = int(t) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    abar = scheduler.alphas_cumprod
    return abar[int(t)], (abar[prev] if prev >= 0 else scheduler.final_alpha_cumprod)


def ddim_step(scheduler, z_t: Tensor, eps: Tensor, t) -> Tensor:
    """The deterministic DDIM update (notebook 04; Song et al. 2021, eq. 12 with sigma = 0):

        z0_hat = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        z_prev = sqrt(abar_prev) z0_hat + sqrt(1 - abar_prev) eps

    the guess of the clean latent, noised again to the previous timestep with the same eps.
    Equal to ``DDIMScheduler.step(eps, t, z_t, eta=0).prev_sample``. Shapes: (b, C, h, w).
    """
    abar_t, abar_prev = (a.to(z_t.device, torch.float32) for a in abar_pair(scheduler, t))
    z0 = x0_from_noise(z_t.float(), eps.float(), abar_t)
    return add_noise(z0, eps.float(), abar_prev).to(z_t.dtype)


def ddim_inverse_step(scheduler, z_prev: Tensor, eps: Tensor, t) -> Tensor:
    """The DDIM update run backwards (notebook 06): from z_prev up to z_t with the same formula,

        z0_hat = (z_prev - sqrt(1 - abar_prev) eps) / sqrt(abar_prev)
        z_t = sqrt(abar_t) z0_hat + sqrt(1 - abar_t) eps

    where eps is predicted at the point we stand on, (z_prev, t): exact if eps(z_t, t) equals it,
    which holds only in the limit of small steps. ``ddim_step`` undoes it exactly for the same eps.
    """
    abar_t, abar_prev = (a.to(z_prev.device, torch.float32) for a in abar_pair(scheduler, t))
    z0 = x0_from_noise(z_prev.float(), eps.float(), abar_prev)
    return add_noise(z0, eps.float(), abar_t).to(z_prev.dtype)


def _step_kwargs(scheduler, generator, eta: float) -> dict:
    params = inspect.signature(scheduler.step).parameters
    kw = {}
    if "eta" in params:
        kw["eta"] = eta
    if "generator" in params:
        kw["generator"] = generator
    return kw


@dataclasses.dataclass
class StepOutput:
    prev: Tensor  # (batch, C, h, w): z_{t-1} (the next latents)
    x0: Tensor  # (batch, C, h, w): the predicted clean latent at this step
    eps: Tensor  # (batch, C, h, w): the guided noise prediction


@torch.no_grad()
def guided_eps(unet, scheduler, z_t: Tensor, t, embeddings: Tensor, guidance_scale: float) -> Tensor:
    """The UNet's noise prediction at (z_t, t), guided when ``embeddings`` holds both branches.

    ``embeddings``: (2 batch, L, D) = ``cat([uncond, cond])``, or (batch, L, D) for the
    conditional prediction alone (what ``w = 1`` gives).
    """
    b = z_t.shape[0]
    if embeddings.shape[0] not in (b, 2 * b):
        raise ValueError(f"embeddings have {embeddings.shape[0]} rows for {b} latents: pass "
                         f"cat([uncond, cond]) ({2 * b} rows) or the conditional embeddings alone ({b})")
    two = embeddings.shape[0] == 2 * b
    z_in = torch.cat([z_t, z_t]) if two else z_t  # (2b or b, C, h, w)
    z_in = scheduler.scale_model_input(z_in, t)  # identity for DDIM, sigma-scaling for Euler
    eps = unet(z_in, t, encoder_hidden_states=embeddings).sample  # (2b or b, C, h, w)
    if not two:
        return eps
    eps_uncond, eps_cond = eps.chunk(2)  # uncond first, as in cat([uncond, cond])
    return guidance(eps_uncond, eps_cond, guidance_scale)


def denoise_step(unet, scheduler, z_t: Tensor, t, embeddings: Tensor, guidance_scale: float,
                 generator: torch.Generator | None = None, eta: float = 0.0) -> StepOutput:
    """One reverse step z_t -> z_{t-1} with everything a visualisation needs (see :func:`sampling_step`)."""
    eps = guided_eps(unet, scheduler, z_t, t, embeddings, guidance_scale)  # (b, C, h, w)
    out = scheduler.step(eps, t, z_t, **_step_kwargs(scheduler, generator, eta))
    x0 = getattr(out, "pred_original_sample", None)
    if x0 is None:
        x0 = predict_x0(scheduler, z_t, eps, t)
    return StepOutput(out.prev_sample, x0, eps)


def sampling_step(unet, scheduler, z_t: Tensor, t, embeddings: Tensor, guidance_scale: float) -> Tensor:
    """One guided reverse step: ``z_{t-1} = scheduler.step(eps_uncond + w (eps_cond - eps_uncond), t, z_t)``.

    The latents are duplicated, scaled by ``scheduler.scale_model_input``, denoised by the UNet in one
    batch with ``embeddings = cat([uncond, cond])``, the two halves combined by :func:`guidance`,
    and ONE scheduler step taken. Returns z_{t-1}, shape (batch, C, h, w).
    """
    return denoise_step(unet, scheduler, z_t, t, embeddings, guidance_scale).prev


# ---------------------------------------------------------------- the whole loop

def _generator(seed) -> torch.Generator | None:
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, (int, np.integer)):
        return torch.Generator("cpu").manual_seed(int(seed))
    raise TypeError(f"seed must be an int, a torch.Generator or None, got {seed!r}")


def latent_shape(pipe, batch_size: int = 1, height: int | None = None, width: int | None = None):
    """(batch, C, H / f, W / f) where f is the autoencoder's downsampling factor."""
    f = pipe.vae_scale_factor
    height = height or pipe.unet.config.sample_size * f
    width = width or pipe.unet.config.sample_size * f
    if height % f or width % f:
        raise ValueError(f"height and width must be multiples of the downsampling factor {f}, got "
                         f"{height}x{width}")
    return (batch_size, pipe.unet.config.in_channels, height // f, width // f)


def initial_latents(pipe, seed=0, batch_size: int = 1, height: int | None = None,
                    width: int | None = None, scheduler=None) -> Tensor:
    """z_T, drawn exactly as ``StableDiffusionPipeline`` draws it for ``generator``. Shape (batch, C, h, w).

    The course's one z_T convention. ``seed``: an int (a CPU ``torch.Generator`` seeded with it, so
    a seed gives the same noise on every device) or a ``torch.Generator``. The noise is drawn on the
    generator's device in the pipeline's dtype, moved to the pipeline's device and multiplied by the
    ``init_noise_sigma`` of ``scheduler`` (default: the pipeline's; 1 for DDIM, about 14.6 for Euler,
    whose samples are scaled differently).
    """
    g = _generator(seed)
    shape = latent_shape(pipe, batch_size, height, width)
    device = pipe_device(pipe)
    draw_on = g.device if g is not None else device
    z = torch.randn(shape, generator=g, device=draw_on, dtype=pipe_dtype(pipe)).to(device)
    return z * (scheduler or pipe.scheduler).init_noise_sigma  # (batch, C, h, w)


@dataclasses.dataclass
class SampleOutput:
    """What :func:`sample` returns. Intermediates are on the CPU in float32, one entry per step."""

    images: Tensor  # (batch, 3, H, W) in [0, 1]
    latents: Tensor  # (batch, C, h, w): z_0
    timesteps: list[int]
    trajectory: list[Tensor] | None = None  # z_T, then z after each step (steps + 1 entries)
    x0: list[Tensor] | None = None  # predicted z_0 at each step (steps entries)

    def numpy(self) -> np.ndarray:
        """The images as a float array (batch, H, W, 3) in [0, 1], ready for ``plt.imshow``."""
        return to_numpy(self.images)


def progress_bar(pipe, iterable, total: int, desc: str = "sampling", enabled: bool | None = None):
    """A tqdm bar over ``iterable`` (as diffusers shows one), or the iterable itself when quiet.

    ``enabled=None``: on for Stable Diffusion and other large models, where a call takes seconds to
    minutes; off for the shipped model, where it takes a fraction of a second.
    """
    from .model import is_shapes_model

    if enabled is None:
        enabled = not is_shapes_model(pipe)
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


@torch.no_grad()
def denoise(pipe, z: Tensor, cond, uncond: Tensor | None, scheduler, guidance_scale: float, *,
            control=None, on_step=None, start: int = 0, generator: torch.Generator | None = None,
            eta: float = 0.0, progress: bool | None = None) -> Tensor:
    """The reverse loop z_T -> z_0 that every sampler of the course runs (notebooks 04-06).

    For each timestep t of ``scheduler.timesteps`` (counting down), from loop index ``start`` on:
    the guided noise prediction at (z_t, t) and one scheduler step (:func:`denoise_step`).

    z: z_T (b, C, h, w), or the latents before step ``start`` (a re-run that resumes mid-way).
    cond: the prompts' embeddings (b, L, D), or a function of the loop index i returning them (text
    embeddings that change by step). uncond: (1 or b, L, D), the unconditional embedding, used
    where ``guidance_scale != 1``, or a function of i returning it (null-text inversion's per-step
    null embeddings, notebook 06). control: an attention control (:mod:`p2p_lab.unet_attention`),
    installed for the loop; its ``step`` is set to i before each UNet call. on_step(i, out) -> z:
    called after each step with its :class:`StepOutput`, returns the latents to go on with.
    progress: a progress bar (default: on for Stable Diffusion, off for the shipped model).
    """
    from .unet_attention import hooked

    guided = guidance_scale != 1
    steps = list(enumerate(scheduler.timesteps))[start:]
    with hooked(pipe.unet, control) if control is not None else contextlib.nullcontext():
        if control is not None:
            control.n_uncond = len(z) if guided else 0
        for i, t in progress_bar(pipe, steps, len(steps), enabled=progress):
            c = cond(i) if callable(cond) else cond  # (b, L, D)
            u = uncond(i) if callable(uncond) else uncond  # (1 or b, L, D)
            emb = torch.cat([u.expand(len(c), -1, -1), c]) if guided else c  # (2b or b, L, D)
            if control is not None:
                control.step = i
            out = denoise_step(pipe.unet, scheduler, z, t, emb, guidance_scale, generator, eta)
            z = out.prev if on_step is None else on_step(i, out)  # (b, C, h, w)
    return z


@torch.no_grad()
def sample(pipe, prompt, seed=0, num_inference_steps: int = 50, guidance_scale: float = 7.5,
           negative_prompt: str = "", latents: Tensor | None = None, height: int | None = None,
           width: int | None = None, eta: float = 0.0, return_intermediates: bool = False,
           progress: bool | None = None, control=None) -> SampleOutput:
    """Text -> image by hand: encode the prompt, draw z_T, run the scheduler's steps, decode z_0.

    Gives the same images as ``pipe(prompt, num_inference_steps=..., guidance_scale=...,
    generator=torch.Generator("cpu").manual_seed(seed))`` (for ``guidance_scale > 1``; for
    ``w <= 1`` the library skips guidance, while this loop still applies the formula for every
    ``w != 1``, so ``w = 0`` is the unconditional model). ``latents`` replaces the drawn z_T (it
    must already include ``init_noise_sigma``). ``return_intermediates`` keeps z_t and the
    predicted z_0 of every step. ``progress``: a progress bar (default: on for Stable Diffusion,
    off for the shipped model). ``control``: an attention control installed for the loop (a
    recorder in notebook 02, see :mod:`p2p_lab.unet_attention`).
    """
    prompts = prompt_list(prompt)
    emb = encode_prompt(pipe, prompts, negative_prompt)
    scheduler = fresh_scheduler(pipe, num_inference_steps)
    g = _generator(seed)
    if latents is None:
        z = initial_latents(pipe, g, len(prompts), height, width, scheduler)
    else:
        z = latents.to(pipe_device(pipe))
    traj = [z.float().cpu()] if return_intermediates else None
    x0s = [] if return_intermediates else None

    def keep(i, out):
        traj.append(out.prev.float().cpu())
        x0s.append(out.x0.float().cpu())
        return out.prev

    z = denoise(pipe, z, emb.cond, emb.uncond, scheduler, guidance_scale, generator=g, eta=eta,
                on_step=keep if return_intermediates else None, progress=progress, control=control)
    return SampleOutput(decode(pipe, z), z, [int(t) for t in scheduler.timesteps], traj, x0s)


# ---------------------------------------------------------------- the autoencoder

def _vae(pipe_or_vae):
    return getattr(pipe_or_vae, "vae", pipe_or_vae)


@torch.no_grad()
def decode(pipe, latents: Tensor) -> Tensor:
    """Latents -> images in [0, 1], shape (batch, 3, H, W).

    The diffusion model works on latents multiplied by ``vae.config.scaling_factor`` (chosen so that
    they have about unit variance, like the noise); the decoder wants them divided back first.
    """
    vae = _vae(pipe)
    z = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
    x = torch.cat([vae.decode(part).sample for part in _vae_chunks(vae, z, latent=True)])  # (batch, 3, H, W), about [-1, 1]
    return (x / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def encode(pipe, images: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """Images in [0, 1] (batch, 3, H, W) -> latents z_0, scaled by ``scaling_factor``. Shape (batch, C, h, w).

    The encoder outputs a Gaussian per latent pixel (the "VAE" part); by default its mean is used,
    ``sample=True`` draws from it instead.
    """
    vae = _vae(pipe)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"encode expects images of shape (batch, 3, H, W) in [0, 1], got "
                         f"{tuple(images.shape)}; use image_to_tensor for an (H, W, 3) array")
    x = images.to(device=vae.device, dtype=vae.dtype) * 2 - 1  # (batch, 3, H, W) in [-1, 1]
    dists = [vae.encode(part).latent_dist for part in _vae_chunks(vae, x, latent=False)]
    z = torch.cat([d.sample(generator) if sample else d.mean for d in dists])  # (batch, C, h, w)
    return z * vae.config.scaling_factor


# The autoencoder's activations at full resolution dominate the memory of a big batch (a 512-px image
# in fp16 holds about a gigabyte of them at once), so decode and encode go through it a few images at
# a time. Every image is processed on its own anyway (GroupNorm normalises per image), so the result
# is the same as one call on the whole batch; the shipped model's small images go through in one piece.
VAE_CHUNK_PIXELS = 2 * 512 * 512  # image pixels per autoencoder call: two Stable Diffusion images


def _vae_chunks(vae, x: Tensor, latent: bool):
    f = 2 ** (len(vae.config.block_out_channels) - 1)  # image pixels per latent pixel, each way (SD: 8)
    pixels = x.shape[-2] * x.shape[-1] * (f * f if latent else 1)
    per_call = max(1, VAE_CHUNK_PIXELS // pixels)
    return x.split(per_call)


def image_to_tensor(image, size: int | None = None) -> Tensor:
    """An (H, W, 3) image (uint8, or float in [0, 1]; numpy or PIL) -> (1, 3, size, size) in [0, 1]."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
    arr = arr[..., :3]
    x = torch.from_numpy(arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0))
    x = x.permute(2, 0, 1)[None]  # (1, 3, H, W)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
    return x.clamp(0, 1)


def to_numpy(images: Tensor) -> np.ndarray:
    """(batch, 3, H, W) in [0, 1] -> float32 numpy (batch, H, W, 3)."""
    return images.detach().float().cpu().permute(0, 2, 3, 1).numpy()


# ---------------------------------------------------------------- why latent space

@dataclasses.dataclass
class LatentCost:
    image_shape: tuple[int, int, int]  # (3, H, W)
    latent_shape: tuple[int, int, int]  # (C, H / f, W / f)
    factor: int  # f, the downsampling factor per side
    values_ratio: float  # numbers per image / numbers per latent
    pixels_ratio: float  # spatial positions: f ** 2
    attention_ratio: float  # self-attention cost ~ positions ** 2: f ** 4


def latent_cost(image_size: int, factor: int, latent_channels: int = 4) -> LatentCost:
    """How much smaller the diffusion model's input is in latent space, and what that saves.

    A convolution's cost grows with the number of spatial positions (f^2 fewer in latent space);
    self-attention over all positions grows with its square (f^4 fewer).
    """
    if image_size % factor:
        raise ValueError(f"image_size {image_size} is not a multiple of the factor {factor}")
    s = image_size // factor
    img, lat = (3, image_size, image_size), (latent_channels, s, s)
    return LatentCost(img, lat, factor, (3 * image_size ** 2) / (latent_channels * s * s),
                      float(factor ** 2), float(factor ** 4))


def seconds_per_image(pipe, num_inference_steps: int, prompt: str = "a red circle", seed: int = 0,
                      guidance_scale: float = 7.5) -> float:
    """Wall-clock seconds of one :func:`sample` call (prompt encoding, all steps, decoding)."""
    import time

    if str(pipe_device(pipe)).startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = sample(pipe, prompt, seed, num_inference_steps, guidance_scale, progress=False)
    out.images.cpu()  # waits for the GPU
    return time.perf_counter() - start
