"""Public checks for notebook 04 (latent diffusion sampling): guidance, one step, the loop.

The checks run on a tiny pipeline with random weights built here (same classes as the shipped
model, seconds to build, no files needed), with two schedulers: DDIM, where the scheduler's
``scale_model_input`` and ``init_noise_sigma`` do nothing, and Euler, where they matter. The
references are diffusers itself (``scheduler.step``, ``pipe(...)``) and the package.
"""
from __future__ import annotations

import copy
import functools
from typing import Callable

import torch

from ._core import Mistake, answer, check_pipeline, run_check

__all__ = ["check_guidance", "check_ddim_step", "check_sampling_step", "check_sample"]

_PIPELINE_CALL = "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.__call__"
# The package's (and diffusers') own implementations of what notebook 04 asks, per exercise:
# blocked while a student's function runs, in the public checks and in the grader's hidden tests.
FORBIDDEN = {
    "guidance": ("p2p_lab.ldm.guidance", "p2p_lab.ldm.guided_eps"),
    "ddim_step": ("p2p_lab.ldm.ddim_step", "p2p_lab.ldm.ddim_inverse_step", "p2p_lab.ddpm.add_noise",
                  "p2p_lab.ddpm.x0_from_noise", "diffusers.schedulers.scheduling_ddim.DDIMScheduler.step"),
    "sampling_step": ("p2p_lab.ldm.sampling_step", "p2p_lab.ldm.denoise_step", "p2p_lab.ldm.guided_eps",
                      "p2p_lab.ldm.sample"),
    "sample": ("p2p_lab.ldm.sample", "p2p_lab.ldm.denoise", "p2p_lab.ldm.decode", "p2p_lab.ldm.initial_latents",
               _PIPELINE_CALL),
}



# ---------------------------------------------------------------- the DDIM step (no model needed)

def ddim_cases(seed: int = 0, steps=(10, 25, 50), shapes=((1, 4, 8, 8), (2, 4, 4, 4), (1, 4, 16, 16))):
    """(z_t, eps, t, scheduler) for DDIM steps at the start, middle and end of a schedule (the last
    step lands on abar = final_alpha_cumprod)."""
    from diffusers import DDIMScheduler

    from ..model import build_scheduler

    g = torch.Generator().manual_seed(seed)
    cases = []
    for n, shape in zip(steps, shapes):
        sch = DDIMScheduler.from_config(build_scheduler().config)
        sch.set_timesteps(n)
        for t in (sch.timesteps[0], sch.timesteps[n // 2], sch.timesteps[-1]):
            cases.append({"z_t": torch.randn(shape, generator=g), "eps": torch.randn(shape, generator=g),
                          "t": int(t), "scheduler": sch})
    return cases


@answer
def ddim_reference(z_t, eps, t, scheduler):
    """diffusers' own DDIM step (eta = 0)."""
    return scheduler.step(eps, t, z_t, eta=0.0).prev_sample


@answer
def _ddim_wrong(renoise="prev", noise=lambda a: (1 - a).sqrt(), back=True):
    def compute(z_t, eps, t, scheduler):
        from ..ldm import abar_pair

        abar_t, abar_prev = abar_pair(scheduler, t)
        z0 = (z_t - noise(abar_t) * eps) / abar_t.sqrt()
        a = {"prev": abar_prev, "t": abar_t, "one": torch.ones_like(abar_t)}[renoise]
        return a.sqrt() * z0 + (noise(a) * eps if back else 0)
    return compute


DDIM_MISTAKES = (
    Mistake("returns_z0", _ddim_wrong(back=False, renoise="one"),
            "that is the predicted clean latent z0_hat; DDIM then noises it again to the previous "
            "timestep: sqrt(abar_prev) z0_hat + sqrt(1 - abar_prev) eps"),
    Mistake("no_renoise", _ddim_wrong(back=False),
            "sqrt(abar_prev) z0_hat is only the signal: add the noise term sqrt(1 - abar_prev) eps (the "
            "same eps, which is what makes DDIM deterministic)"),
    Mistake("abar_t_twice", _ddim_wrong(renoise="t"),
            "you noised z0_hat back to abar_t, which returns z_t unchanged: the step goes to abar_prev"),
    Mistake("noise_without_sqrt", _ddim_wrong(noise=lambda a: 1 - a),
            "the noise coefficients are sqrt(1 - abar), not 1 - abar (the slides' Property 1 drops the root)"),
)


def check_ddim_step(fn):
    """``fn(z_t, eps, abar_t, abar_prev)`` -> z_prev, the deterministic DDIM step (eta = 0), checked
    against diffusers' ``DDIMScheduler.step`` on steps of schedules of 10, 25 and 50 steps."""
    from ..ldm import abar_pair

    def student(z_t, eps, t, scheduler):
        abar_t, abar_prev = abar_pair(scheduler, t)
        return fn(z_t.clone(), eps.clone(), abar_t.clone(), abar_prev.clone())

    return run_check("ddim_step", student, ddim_reference, ddim_cases(), DDIM_MISTAKES, atol=1e-5, forbidden=FORBIDDEN["ddim_step"])


# ---------------------------------------------------------------- the checks' pipeline, with other schedulers

def _with_scheduler(pipe, kind: str):
    """The same pipeline with a fresh DDIM, Euler or DPM-Solver scheduler (same noise schedule)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    from ..ldm import with_scheduler

    cls = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler,
           "dpm": DPMSolverMultistepScheduler}[kind]
    return with_scheduler(pipe, cls)


# ---------------------------------------------------------------- 1. guidance

def _guidance_cases(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes_w = [((1, 4, 8, 8), 7.5), ((2, 4, 8, 8), 3.0), ((1, 4, 16, 16), 1.0), ((3, 4, 4, 4), 0.0)]
    return [{"eps_uncond": torch.randn(s, generator=g), "eps_cond": torch.randn(s, generator=g),
             "guidance_scale": w} for s, w in shapes_w]


GUIDANCE_MISTAKES = (
    Mistake("swapped", lambda eps_uncond, eps_cond, guidance_scale:
            eps_cond + guidance_scale * (eps_uncond - eps_cond),
            "you swapped the two branches: start from eps_uncond and move towards eps_cond, "
            "eps_uncond + w * (eps_cond - eps_uncond)"),
    Mistake("plus_one_convention", lambda eps_uncond, eps_cond, guidance_scale:
            eps_cond + guidance_scale * (eps_cond - eps_uncond),
            "you used the (1 + w) convention of Ho & Salimans (eps_cond + w (eps_cond - eps_uncond)); "
            "diffusers and this course start from eps_uncond: eps_uncond + w (eps_cond - eps_uncond)"),
    Mistake("scaled_cond_only", lambda eps_uncond, eps_cond, guidance_scale: guidance_scale * eps_cond,
            "you only scaled eps_cond; guidance moves from eps_uncond along the difference "
            "(eps_cond - eps_uncond)"),
    Mistake("no_guidance", lambda eps_uncond, eps_cond, guidance_scale: eps_cond,
            "you returned eps_cond unchanged: combine it with eps_uncond using the scale w"),
    Mistake("wrong_sign", lambda eps_uncond, eps_cond, guidance_scale:
            eps_uncond - guidance_scale * (eps_cond - eps_uncond),
            "wrong sign: guidance adds w * (eps_cond - eps_uncond) to eps_uncond"),
)


def check_guidance(fn):
    """``fn(eps_uncond, eps_cond, guidance_scale)`` -> the guided noise prediction."""
    from ..ldm import guidance

    return run_check("guidance", fn, guidance, _guidance_cases(), GUIDANCE_MISTAKES,
                     atol=1e-6, rtol=1e-5, forbidden=FORBIDDEN["guidance"])


# ---------------------------------------------------------------- 2. one sampling step

def _fresh(scheduler):
    return copy.deepcopy(scheduler)


@answer
def _step_variant(unet, scheduler, z_t, t, embeddings, guidance_scale, *, swap=False, scale=True,
                  two_steps=False, combine=None, x0=False):
    """What a (possibly wrong) one-step solution returns; the scheduler is copied, never changed."""
    from ..ldm import guidance

    sch = _fresh(scheduler)
    z_in = torch.cat([z_t, z_t])  # (2b, C, h, w)
    if scale:
        z_in = sch.scale_model_input(z_in, t)
    with torch.no_grad():
        eps = unet(z_in, t, encoder_hidden_states=embeddings).sample  # (2b, C, h, w)
    eps_u, eps_c = eps.chunk(2)
    if swap:
        eps_u, eps_c = eps_c, eps_u
    if two_steps:  # one scheduler step per branch, guidance on the resulting latents
        z_u = sch.step(eps_u, t, z_t).prev_sample
        z_c = sch.step(eps_c, t, z_t).prev_sample
        return z_u + guidance_scale * (z_c - z_u)
    eps = combine(eps_u, eps_c, guidance_scale) if combine else guidance(eps_u, eps_c, guidance_scale)
    out = sch.step(eps, t, z_t)
    return out.pred_original_sample if x0 else out.prev_sample


def step_cases(seed: int = 0, pipe=None, kinds=("ddim", "euler"), steps: int = 10, at: int = 3,
               guidance_scales=(7.5, 4.0), batch: int = 1):
    """Seeded inputs for a one-step solution: a mid-schedule timestep of each scheduler kind."""
    from ..ldm import encode_prompt

    pipe = pipe or check_pipeline()
    prompts = ["a red circle on a blue background", "a big turquoise square", "a small green triangle"]
    cases = []
    for i, kind in enumerate(kinds):
        p = _with_scheduler(pipe, kind)
        p.scheduler.set_timesteps(steps)
        t = p.scheduler.timesteps[at]
        g = torch.Generator().manual_seed(seed + i)
        z_t = torch.randn((batch, 4, 8, 8), generator=g) * p.scheduler.init_noise_sigma
        emb = encode_prompt(p, [prompts[(i + k) % 3] for k in range(batch)]).both()  # (2b, L, D)
        cases.append({"unet": p.unet, "scheduler": p.scheduler, "z_t": z_t, "t": t,
                      "embeddings": emb, "guidance_scale": guidance_scales[i % len(guidance_scales)]})
    return cases


STEP_MISTAKES = (
    Mistake("swapped", functools.partial(_step_variant, swap=True),
            "the UNet's output comes back in the order of the embeddings, cat([uncond, cond]): "
            "eps_uncond, eps_cond = eps.chunk(2), not the other way round"),
    Mistake("no_scale_model_input", functools.partial(_step_variant, scale=False),
            "call scheduler.scale_model_input(latents, t) on the UNet's input: DDIM leaves it "
            "unchanged, but Euler divides by sqrt(sigma^2 + 1), and the UNet expects that"),
    Mistake("guidance_on_latents", functools.partial(_step_variant, two_steps=True),
            "you took one scheduler step per branch and combined the latents; combine the noise "
            "predictions (eps) with guidance, then take ONE scheduler.step (DDIM happens to agree, "
            "but a scheduler with state, like Euler, advances on every step() call)"),
    Mistake("no_guidance", functools.partial(_step_variant, combine=lambda u, c, w: c),
            "you used eps_cond alone: combine eps_uncond and eps_cond with the guidance scale"),
    Mistake("plus_one_convention", functools.partial(
        _step_variant, combine=lambda u, c, w: c + w * (c - u)),
        "guidance is eps_uncond + w (eps_cond - eps_uncond), not the (1 + w) convention"),
    Mistake("returned_x0", functools.partial(_step_variant, x0=True),
            "you returned the predicted z_0 (pred_original_sample); return .prev_sample, the "
            "latents for the next step"),
)


@answer
def _step_reference(unet, scheduler, z_t, t, embeddings, guidance_scale):
    from ..ldm import sampling_step

    return sampling_step(unet, _fresh(scheduler), z_t, t, embeddings, guidance_scale)


def check_sampling_step(fn):
    """``fn(unet, scheduler, z_t, t, embeddings, guidance_scale)`` -> z_{t-1}.

    ``embeddings`` is ``cat([uncond, cond])``; cases use DDIM and Euler.
    """
    return run_check("sampling_step", fn, _step_reference, step_cases(), STEP_MISTAKES,
                     atol=1e-4, rtol=1e-4, forbidden=FORBIDDEN["sampling_step"])


# ---------------------------------------------------------------- 3. the sampling loop

@answer
def _loop_variant(pipe, prompt, seed, num_inference_steps, guidance_scale, *, init_sigma=True,
                  scale=True, reverse=False, vae_scale=True, swap=False, denormalize=True, sigma_first=False):
    """What a (possibly wrong) hand-written loop returns: images (b, 3, H, W); from a fresh
    scheduler state, as the check gives the student's loop."""
    from ..ldm import encode_prompt, latent_shape

    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    emb = encode_prompt(pipe, prompts).both()  # (2b, L, D)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(latent_shape(pipe, len(prompts)), generator=g)  # (b, C, h, w)
    sch = type(pipe.scheduler).from_config(pipe.scheduler.config)
    if sigma_first:
        z = z * sch.init_noise_sigma
    sch.set_timesteps(num_inference_steps)  # first: Euler's init_noise_sigma depends on the steps
    if init_sigma and not sigma_first:
        z = z * sch.init_noise_sigma
    timesteps = sch.timesteps.flip(0) if reverse else sch.timesteps
    with torch.no_grad():
        for t in timesteps:
            z_in = torch.cat([z, z])
            z_in = sch.scale_model_input(z_in, t) if scale else z_in
            eps_u, eps_c = pipe.unet(z_in, t, encoder_hidden_states=emb).sample.chunk(2)
            if swap:
                eps_u, eps_c = eps_c, eps_u
            z = sch.step(eps_u + guidance_scale * (eps_c - eps_u), t, z).prev_sample
        x = pipe.vae.decode(z / (pipe.vae.config.scaling_factor if vae_scale else 1.0)).sample
    return (x / 2 + 0.5).clamp(0, 1) if denormalize else x


def loop_cases(pipe=None, seeds=(0, 1), steps=(4, 5), guidance_scales=(7.5, 3.0),
               kinds=("ddim", "euler"), prompts=("a red circle on a blue background", "a big yellow square")):
    pipe = pipe or check_pipeline()
    return [{"pipe": _with_scheduler(pipe, k), "prompt": prompts[i % len(prompts)], "seed": seeds[i],
             "num_inference_steps": steps[i], "guidance_scale": guidance_scales[i]}
            for i, k in enumerate(kinds)]


@answer
def loop_reference(pipe, prompt, seed, num_inference_steps, guidance_scale):
    """diffusers' own pipeline, for the same seed (a CPU generator), steps and guidance."""
    return pipe(prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="pt").images


LOOP_MISTAKES = (
    Mistake("reversed_timesteps", functools.partial(_loop_variant, reverse=True),
            "sampling walks the timesteps from noisy to clean: iterate scheduler.timesteps as given "
            "(it counts down, e.g. 751, 501, 251, 1), not reversed"),
    Mistake("no_vae_scaling", functools.partial(_loop_variant, vae_scale=False),
            "divide the latents by vae.config.scaling_factor before vae.decode: the diffusion model "
            "works on scaled latents"),
    Mistake("swapped", functools.partial(_loop_variant, swap=True),
            "the guidance branches are swapped: with embeddings cat([uncond, cond]), the UNet's "
            "output chunks are (eps_uncond, eps_cond)"),
    Mistake("no_denormalize", functools.partial(_loop_variant, denormalize=False),
            "the decoder outputs images in [-1, 1]: map them to [0, 1] with x / 2 + 0.5, clamped to [0, 1]"),
    Mistake("no_init_noise_sigma", functools.partial(_loop_variant, init_sigma=False),
            "multiply z_T by scheduler.init_noise_sigma (1 for DDIM, but about 14.6 for Euler, "
            "whose latents live at a larger scale)"),
    Mistake("no_scale_model_input", functools.partial(_loop_variant, scale=False),
            "call scheduler.scale_model_input on the UNet's input at every step (Euler needs it)"),
    Mistake("noise_sigma_before_timesteps", functools.partial(_loop_variant, sigma_first=True),
            "call scheduler.set_timesteps first and only then multiply z_T by scheduler.init_noise_sigma: "
            "Euler's initial sigma is the largest of the chosen timesteps, and before set_timesteps it is "
            "the 1000-step schedule's"),
)


def fresh_scheduler_state(fn: Callable) -> Callable:
    """``fn(pipe, ...)`` called with a new scheduler of the pipeline's class and config, as a freshly
    loaded pipeline has (so no state left by an earlier run can make a loop right by accident)."""
    def call(pipe, *args, **kwargs):
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        return fn(pipe, *args, **kwargs)
    return call


def check_sample(fn):
    """``fn(pipe, prompt, seed, num_inference_steps, guidance_scale)`` -> images (b, 3, H, W) in [0, 1]."""
    return run_check("sample", fresh_scheduler_state(fn), loop_reference, loop_cases(), LOOP_MISTAKES, atol=1e-4,
                     rtol=1e-4, forbidden=FORBIDDEN["sample"])
