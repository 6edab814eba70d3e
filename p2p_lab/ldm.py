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

__all__ = [
    "pipe_device", "pipe_dtype", "with_scheduler",
    "tokenize", "encode_text", "PromptEmbeddings", "encode_prompt",
    "guidance", "predict_x0", "abar_pair", "ddim_step", "ddim_inverse_step", "StepOutput",
    "guided_eps", "denoise_step", "sampling_step",
    "latent_shape", "initial_latents", "SampleOutput", "progress_bar", "denoise", "sample",
    "fresh_scheduler",
    "decode", "encode", "image_to_tensor", "to_numpy",
    "attention_layers", "LatentCost", "latent_cost", "seconds_per_image",
    "diffusion_loss", "TrainLog", "trainable_parameters", "train_briefly", "weights_fingerprint",
    "BaselineStats", "fixed_seed", "fixed_seed_baseline",
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

def _as_list(prompt, what: str = "prompt") -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise TypeError(f"{what} must be a string or a non-empty list of strings, got {prompt!r}")


def tokenize(tokenizer, prompt) -> Tensor:
    """Token ids padded to the tokenizer's fixed length ``model_max_length``. Shape (batch, L).

    CLIP's convention: a start token, the prompt's tokens, an end token, then padding (CLIP pads
    with the end token) up to L (16 for the shipped model, 77 for Stable Diffusion). A prompt
    longer than L raises ValueError instead of being cut silently.
    """
    prompts = _as_list(prompt)
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
    prompts = _as_list(prompt)
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
    z0 = (z_t.float() - (1 - abar_t).sqrt() * eps.float()) / abar_t.sqrt()
    return z0.to(z_t.dtype)


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
    z0 = (z_t.float() - (1 - abar_t).sqrt() * eps.float()) / abar_t.sqrt()
    return (abar_prev.sqrt() * z0 + (1 - abar_prev).sqrt() * eps.float()).to(z_t.dtype)


def ddim_inverse_step(scheduler, z_prev: Tensor, eps: Tensor, t) -> Tensor:
    """The DDIM update run backwards (notebook 06): from z_prev up to z_t with the same formula,

        z0_hat = (z_prev - sqrt(1 - abar_prev) eps) / sqrt(abar_prev)
        z_t = sqrt(abar_t) z0_hat + sqrt(1 - abar_t) eps

    where eps is predicted at the point we stand on, (z_prev, t): exact if eps(z_t, t) equals it,
    which holds only in the limit of small steps. ``ddim_step`` undoes it exactly for the same eps.
    """
    abar_t, abar_prev = (a.to(z_prev.device, torch.float32) for a in abar_pair(scheduler, t))
    z0 = (z_prev.float() - (1 - abar_prev).sqrt() * eps.float()) / abar_prev.sqrt()
    return (abar_t.sqrt() * z0 + (1 - abar_t).sqrt() * eps.float()).to(z_prev.dtype)


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
    prompts = _as_list(prompt)
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


# ---------------------------------------------------------------- the UNet's attention layers

def attention_layers(pipe, height: int | None = None, width: int | None = None):
    """Every attention layer of the UNet (:class:`p2p_lab.unet_attention.LayerInfo`: name, kind,
    query grid, heads, keys) at an image of ``height`` x ``width`` pixels (default: the model's size)."""
    from .unet_attention import attention_layers as layers_at

    return layers_at(pipe, latent_shape(pipe, 1, height, width)[-2:])


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


# ---------------------------------------------------------------- Algorithm 1 on latents

def diffusion_loss(pipe, images: Tensor, captions: list[str], generator: torch.Generator | None = None) -> Tensor:
    """Algorithm 1 on latents: ``|| eps - eps_theta(sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, t, c) ||^2``.

    z_0 comes from the frozen encoder; t ~ U{0..T-1}, eps ~ N(0, I). The text encoder runs with
    gradients, so the loss trains it together with the UNet ("learned jointly").
    """
    unet, text_encoder = pipe.unet, pipe.text_encoder
    device = pipe_device(pipe)
    z0 = encode(pipe, images).to(pipe_dtype(pipe))  # (b, C, h, w), no gradient: the autoencoder is frozen
    T = pipe.scheduler.config.num_train_timesteps
    t = torch.randint(0, T, (z0.shape[0],), generator=generator).to(device)  # (b,)
    eps = torch.randn(z0.shape, generator=generator).to(device, z0.dtype)  # (b, C, h, w)
    abar = pipe.scheduler.alphas_cumprod.to(device)[t].view(-1, 1, 1, 1).to(z0.dtype)  # (b, 1, 1, 1)
    z_t = abar.sqrt() * z0 + (1 - abar).sqrt() * eps  # Property 1 with sqrt(1 - abar_t)
    ids = tokenize(pipe.tokenizer, captions).to(device)  # (b, L)
    cond = text_encoder(ids)[0]  # (b, L, D), with gradients
    eps_pred = unet(z_t, t, encoder_hidden_states=cond).sample  # (b, C, h, w)
    return torch.nn.functional.mse_loss(eps_pred.float(), eps.float())


@dataclasses.dataclass
class TrainLog:
    losses: list[float]
    unet_change: float  # relative change of the UNet's trained weights
    text_change: float  # relative change of the text encoder's trained weights
    trained: list[str]  # names of the trained parameters ("unet." / "text_encoder." + name)


def trainable_parameters(pipe, which: str = "all") -> dict[str, torch.nn.Parameter]:
    """The parameters a training demo updates, by name (``"unet."`` / ``"text_encoder."`` + name).

    ``which="all"``: every parameter of the UNet and the text encoder (the shipped model: 1.5 M).
    ``which="cross-attention"``: only what the prompt passes through on its way into the image: the
    UNet's cross-attention keys and values (``attn2.to_k``, ``attn2.to_v``) and the text encoder's
    last layer and final norm (Stable Diffusion: about 6 % of its weights, so a demo fits a T4).
    """
    if which not in ("all", "cross-attention"):
        raise ValueError(f"which must be 'all' or 'cross-attention', got {which!r}")
    n_text = pipe.text_encoder.config.num_hidden_layers
    last = (f"encoder.layers.{n_text - 1}.", "final_layer_norm.")  # transformers 4 adds "text_model."
    out = {}
    for part, module in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        for name, p in module.named_parameters():
            keep = which == "all" or (".attn2.to_k." in name or ".attn2.to_v." in name
                                      if part == "unet" else name.removeprefix("text_model.").startswith(last))
            if keep:
                out[f"{part}.{name}"] = p
    return out


def _rel_change(before: dict, params: dict, part: str) -> float:
    names = [n for n in before if n.startswith(part + ".")]
    num = sum(((params[n].detach().float() - before[n].float()) ** 2).sum() for n in names)
    den = sum((before[n].float() ** 2).sum() for n in names)
    return float((num / den).sqrt()) if names else 0.0


@contextlib.contextmanager
def _training(pipe, params: dict):
    """For the ``with`` block: only ``params`` train, as float32 copies; afterwards every one of
    the pipeline's own tensors and gradient flags is put back exactly, even on error."""
    saved = {n: p.data for n, p in params.items()}  # the pipeline's own tensors, put back below
    modules = (pipe.unet, pipe.text_encoder)
    flags = {id(p): p.requires_grad for m in modules for p in m.parameters()}
    try:
        for m in modules:
            m.requires_grad_(False)
        for p in params.values():
            p.data = p.data.float().clone()  # float32 copies of the trained weights only
            p.requires_grad_(True)
        yield saved
    finally:
        for n, p in params.items():
            p.grad, p.data = None, saved[n]
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(flags[id(p)])


def train_briefly(pipe, images: Tensor, captions: list[str], steps: int = 5, lr: float = 1e-4,
                  seed: int = 0, which: str = "all", optimizer=torch.optim.Adam) -> TrainLog:
    """A few optimizer steps of :func:`diffusion_loss`, then every trained weight put back.

    One optimizer updates the UNet's and the text encoder's parameters of
    :func:`trainable_parameters` (``which``): the gradient of the denoising loss reaches the text
    encoder through the cross-attention keys and values. The trained weights are float32 during
    training (under autocast where the pipeline is float16 or bfloat16) and the pipeline's own
    weights are restored exactly afterwards, even on error; only the trained ones are copied, so a
    demo on Stable Diffusion fits a Colab T4 (``which="cross-attention"``, a small batch).
    """
    params = trainable_parameters(pipe, which)
    dtype, device = pipe_dtype(pipe), pipe_device(pipe)
    with _training(pipe, params) as saved:
        opt = optimizer(list(params.values()), lr=lr)
        g = torch.Generator().manual_seed(seed)
        losses = []
        for _ in range(steps):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype in (torch.float16, torch.bfloat16)):
                loss = diffusion_loss(pipe, images, captions, g)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return TrainLog(losses, _rel_change(saved, params, "unet"),
                        _rel_change(saved, params, "text_encoder"), list(params))


def weights_fingerprint(module: torch.nn.Module) -> tuple[float, ...]:
    """Per-tensor sums and sums of squares (float64) of a module's weights: equal fingerprints mean
    unchanged weights, checked without copying them (Stable Diffusion's UNet is 1.7 GB in fp16)."""
    out = []
    for t in module.state_dict().values():
        t = t.detach().double()
        out += [float(t.sum()), float((t * t).sum())]
    return tuple(out)


# ---------------------------------------------------------------- the fixed-seed baseline

@dataclasses.dataclass
class BaselineStats:
    """Same seed, one word changed: what else changed, per seed."""

    seeds: list[int]
    shift: list[float]  # object centroid shift in pixels (nan where an object was not found)
    background_changed: list[bool]
    found: list[bool]  # an object was read in both images
    threshold: float  # pixels of shift that count as "moved"
    source_images: np.ndarray | None = dataclasses.field(default=None, repr=False)  # (n, H, W, 3)
    target_images: np.ndarray | None = dataclasses.field(default=None, repr=False)  # (n, H, W, 3)

    @property
    def moved_fraction(self) -> float:
        """Fraction of seeds (with an object read in both images) whose object moved > threshold."""
        moved = [s > self.threshold for s, f in zip(self.shift, self.found) if f]
        return float(np.mean(moved)) if moved else float("nan")

    @property
    def background_fraction(self) -> float:
        return float(np.mean(self.background_changed))


def fixed_seed(pipe, source: str, targets=(), seed: int = 0, num_inference_steps: int | None = None,
               guidance_scale: float | None = None, progress: bool | None = None) -> np.ndarray:
    """The baseline for editing (notebook 04): ``source`` and every target sampled from the same z_T
    (one draw from ``seed``), nothing else shared. Images (1 + T, H, W, 3) float32 in [0, 1].

    Unset steps and guidance are the model's (:func:`p2p_lab.model.sampling_defaults`), as for
    :func:`p2p_lab.p2p.edit`, so the two are compared at equal settings.
    """
    from .model import sampling_defaults

    default = sampling_defaults(pipe)
    steps = num_inference_steps or default.num_inference_steps
    w = default.guidance_scale if guidance_scale is None else guidance_scale
    prompts = [source, *(_as_list(targets, "targets") if targets else [])]
    z = initial_latents(pipe, seed, 1, scheduler=fresh_scheduler(pipe, steps)).repeat(len(prompts), 1, 1, 1)
    return sample(pipe, prompts, None, steps, w, latents=z, progress=progress).numpy()


def _images_for_seeds(pipe, prompt: str, seeds: list[int], steps: int, w: float, batch: int) -> np.ndarray:
    out = []
    for i in range(0, len(seeds), batch):
        chunk = seeds[i:i + batch]
        z = torch.cat([initial_latents(pipe, s) for s in chunk])  # (n, C, h, w), one z_T per seed
        out.append(sample(pipe, [prompt] * len(chunk), None, steps, w, latents=z,
                          progress=False).numpy())
    return np.concatenate(out)  # (n, H, W, 3)


def fixed_seed_baseline(pipe, source: str, target: str, seeds, num_inference_steps: int = 20,
                        guidance_scale: float = 7.5, threshold: float = 2.0,
                        batch_size: int = 10, score: bool = True) -> BaselineStats:
    """Sample ``source`` and ``target`` from the same z_T per seed and read both images back.

    Each seed's z_T is the one ``pipe(generator=torch.Generator("cpu").manual_seed(seed))`` uses.
    Uses the shapes-world scorer (:func:`p2p_lab.shapes.read_image`), so the numbers mean
    something for the shipped model only: the centroid shift of the largest object, and whether
    the background colour changed. ``score=False`` (Stable Diffusion) keeps the images only; the
    numbers are then nan / False.
    """
    from .metrics import centroid_shift
    from .shapes import read_image

    seeds = [int(s) for s in seeds]
    src, tgt = (_images_for_seeds(pipe, p, seeds, num_inference_steps, guidance_scale, batch_size)
                for p in (source, target))
    shift, bg, found = [], [], []
    for a, b in zip(src, tgt):
        ra, rb = (read_image(a), read_image(b)) if score else (None, None)
        ok = bool(score and ra.objects and rb.objects)
        found.append(ok)
        shift.append(centroid_shift(ra, rb) if ok else float("nan"))
        bg.append(bool(score and ra.background != rb.background))
    return BaselineStats(seeds, shift, bg, found, threshold, src, tgt)
