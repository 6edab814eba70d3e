"""Public checks of notebook 06 (editing a real image): the DDIM step run backwards, and the
objective null-text inversion minimises at every step.

References: the package's own functions (:func:`p2p_lab.ldm.ddim_inverse_step`,
:func:`p2p_lab.ldm.ddim_step`, :func:`p2p_lab.ldm.guidance`), which the tests hold against diffusers'
DDIM step and its exact algebraic inverse. Each ``Mistake`` computes what a typical wrong solution
computes; the hint names it.
"""
from __future__ import annotations

import torch

from ._core import CheckResult, Mistake, answer, run_check

__all__ = ["check_ddim_inverse_step", "check_null_text_loss"]

# The package's own implementations of what notebook 06 asks, per exercise: blocked while a
# student's function runs, in the public checks and in the grader's hidden tests.
FORBIDDEN = {
    "ddim_inverse_step": ("p2p_lab.ldm.ddim_inverse_step", "p2p_lab.p2p.inversion.ddim_inversion",
                          "p2p_lab.p2p.inversion.invert"),
    "null_text_loss": ("p2p_lab.p2p.inversion.optimise_null", "p2p_lab.p2p.inversion.null_text_inversion",
                       "p2p_lab.p2p.inversion.invert"),
}


def inversion_cases(seed: int = 0, steps=(10, 20, 50), shapes=((1, 4, 8, 8), (2, 4, 4, 4), (1, 4, 16, 16))):
    """(z_prev, eps, abar_t, abar_prev) at the first, middle and last step of DDIM schedules; the
    last inversion step starts from z_0 (abar_prev = final_alpha_cumprod)."""
    from .ldm import ddim_cases
    from ..ldm import abar_pair

    cases = []
    for c in ddim_cases(seed, steps, shapes):
        abar_t, abar_prev = abar_pair(c["scheduler"], c["t"])
        cases.append({"z_prev": c["z_t"], "eps": c["eps"], "abar_t": abar_t, "abar_prev": abar_prev,
                      "_scheduler": c["scheduler"], "_t": c["t"]})
    return cases


@answer
def _inverse_reference(z_prev, eps, abar_t, abar_prev, _scheduler, _t):
    from ..ldm import ddim_inverse_step

    return ddim_inverse_step(_scheduler, z_prev, eps, _t)


@answer
def _inverse_wrong(swap=False, noise=lambda a: (1 - a).sqrt(), renoise=True):
    def compute(z_prev, eps, abar_t, abar_prev, _scheduler, _t):
        a_in, a_out = (abar_t, abar_prev) if swap else (abar_prev, abar_t)
        z0 = (z_prev - noise(a_in) * eps) / a_in.sqrt()
        return a_out.sqrt() * z0 + (noise(a_out) * eps if renoise else 0)
    return compute


INVERSE_MISTAKES = (
    Mistake("forward_step", _inverse_wrong(swap=True),
            "that is the DDIM step itself (from abar_t down to abar_prev); inversion goes up: z0_hat from "
            "z_prev with abar_prev, then noised to abar_t"),
    Mistake("returns_z0", _inverse_wrong(renoise=False),
            "sqrt(abar_t) z0_hat is only the signal: add sqrt(1 - abar_t) eps, the same eps"),
    Mistake("noise_without_sqrt", _inverse_wrong(noise=lambda a: 1 - a),
            "the noise coefficients are sqrt(1 - abar), not 1 - abar"),
)


def check_ddim_inverse_step(fn) -> CheckResult:
    """``fn(z_prev, eps, abar_t, abar_prev)`` -> z_t, the DDIM step run backwards (eps predicted at z_prev)."""
    def student(z_prev, eps, abar_t, abar_prev, _scheduler, _t):
        return fn(z_prev, eps, abar_t.clone(), abar_prev.clone())

    return run_check("ddim_inverse_step", student, _inverse_reference, inversion_cases(), INVERSE_MISTAKES,
                     atol=1e-5, forbidden=FORBIDDEN["ddim_inverse_step"])


# ---------------------------------------------------------------- null-text's inner objective

def null_cases(seed: int = 0) -> list[dict]:
    """A guided DDIM step's inputs and the trajectory point it should land on."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for c, w in zip(inversion_cases(seed), (7.5, 4.0, 1.5, 3.0, 7.5, 2.0, 5.0, 4.0, 9.0)):
        shape = c["z_prev"].shape
        cases.append({"z_t": c["z_prev"], "eps_uncond": torch.randn(shape, generator=g),
                      "eps_cond": torch.randn(shape, generator=g), "guidance_scale": w,
                      "abar_t": c["abar_t"], "abar_prev": c["abar_prev"],
                      "z_target": torch.randn(shape, generator=g), "_scheduler": c["_scheduler"], "_t": c["_t"]})
    return cases


@answer
def _null_loss(z_t, eps_uncond, eps_cond, guidance_scale, abar_t, abar_prev, z_target, _scheduler, _t,
               guide=None, target="z_target", reduce="mean"):
    from ..ldm import ddim_step, guidance

    eps = guide(eps_uncond, eps_cond, guidance_scale) if guide else guidance(eps_uncond, eps_cond, guidance_scale)
    err = ddim_step(_scheduler, z_t, eps, _t) - (z_target if target == "z_target" else z_t)
    return (err ** 2).mean() if reduce == "mean" else (err ** 2).sum()


@answer
def _null_reference(**case):
    """The loss and its gradient with respect to eps_uncond (what Adam follows to the null embedding)."""
    u = case["eps_uncond"].clone().requires_grad_(True)
    with torch.enable_grad():
        loss = _null_loss(**{**case, "eps_uncond": u})
        (grad,) = torch.autograd.grad(loss, u)
    return loss.detach(), grad


@answer
def _with_grad(compute):
    def wrapped(**case):
        u = case["eps_uncond"].clone().requires_grad_(True)
        with torch.enable_grad():
            loss = compute(**{**case, "eps_uncond": u})
            if not loss.requires_grad:  # eps_uncond unused: no gradient at all
                return loss.detach(), torch.zeros_like(u)
            (grad,) = torch.autograd.grad(loss, u, allow_unused=True)
        return loss.detach(), torch.zeros_like(u) if grad is None else grad
    return wrapped


NULL_MISTAKES = (
    Mistake("guidance_swapped", _with_grad(lambda **c: _null_loss(**c, guide=lambda u, k, w: k + w * (u - k))),
            "the guided noise is eps_uncond + w (eps_cond - eps_uncond): the null embedding enters through eps_uncond"),
    Mistake("no_guidance", _with_grad(lambda **c: _null_loss(**c, guide=lambda u, k, w: k)),
            "guide the step: with eps_cond alone the null embedding has no effect and nothing is optimised"),
    Mistake("compares_with_z_t", _with_grad(lambda **c: _null_loss(**c, target="z_t")),
            "compare the stepped latent with z_target (z*_prev, where the inversion's trajectory is), not with z_t"),
    Mistake("sum_not_mean", _with_grad(lambda **c: _null_loss(**c, reduce="sum")),
            "take the mean of the squared error (the mean squared error), not its sum"),
)


def check_null_text_loss(fn) -> CheckResult:
    """``fn(z_t, eps_uncond, eps_cond, guidance_scale, abar_t, abar_prev, z_target)`` -> a scalar
    tensor: mean((DDIM step of z_t with eps_uncond + w (eps_cond - eps_uncond)) - z_target)^2), which
    must carry gradients back to eps_uncond; the check compares the loss and that gradient."""
    def student(z_t, eps_uncond, eps_cond, guidance_scale, abar_t, abar_prev, z_target, _scheduler, _t):
        u = eps_uncond.clone().requires_grad_(True)
        with torch.enable_grad():
            loss = fn(z_t, u, eps_cond, guidance_scale, abar_t.clone(), abar_prev.clone(), z_target)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise TypeError(f"return the loss as a 0-dimensional tensor, got {type(loss).__name__} "
                                f"{tuple(getattr(loss, 'shape', ()))}")
            if not loss.requires_grad:  # compared with a zero gradient: a known mistake may explain it
                detached.append(True)
                return loss.detach(), torch.zeros_like(u)
            (grad,) = torch.autograd.grad(loss, u)
        return loss.detach(), grad

    detached: list = []
    result = run_check("null_text_loss", student, _null_reference, null_cases(), NULL_MISTAKES, atol=1e-5,
                       forbidden=FORBIDDEN["null_text_loss"], verbose=False)
    if detached and not result.passed and result.mistake is None:
        result.message = ("the loss carries no gradient back to eps_uncond: compute it with torch operations "
                          "from the tensors you are given (no .item(), no .detach()), through the guided "
                          "noise eps_uncond + w (eps_cond - eps_uncond)")
    print(result)
    return result
