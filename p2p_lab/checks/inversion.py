"""Public checks of notebook 06 (editing a real image): the DDIM step run backwards, the
objective null-text inversion minimises at every step, and its inner Adam loop for one timestep
(``run_null_text`` runs the whole inversion with the student's loop).

References: the package's own functions (:func:`p2p_lab.ldm.ddim_inverse_step`,
:func:`p2p_lab.ldm.ddim_step`, :func:`p2p_lab.ldm.guidance`), which the tests hold against diffusers'
DDIM step and its exact algebraic inverse. Each ``Mistake`` computes what a typical wrong solution
computes; the hint names it.
"""
from __future__ import annotations

import torch

from ._core import CheckResult, Mistake, answer, run_check

__all__ = ["check_ddim_inverse_step", "check_null_text_loss", "check_optimise_null", "run_null_text"]

# The package's own implementations of what notebook 06 asks, per exercise: blocked while a
# student's function runs, in the public checks and in the grader's hidden tests.
FORBIDDEN = {
    "ddim_inverse_step": ("p2p_lab.ldm.ddim_inverse_step", "p2p_lab.p2p.inversion.ddim_inversion",
                          "p2p_lab.p2p.inversion.invert"),
    "null_text_loss": ("p2p_lab.p2p.inversion.optimise_null", "p2p_lab.p2p.inversion.null_text_inversion",
                       "p2p_lab.p2p.inversion.invert"),
    "optimise_null": ("p2p_lab.p2p.inversion.optimise_null", "p2p_lab.p2p.inversion.null_text_inversion",
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


# ---------------------------------------------------------------- null-text's inner optimisation (one timestep)

class _ToyUNet(torch.nn.Module):
    """A stand-in noise predictor with the UNet's calling convention, eps = tanh(flat(c) W) + z / 2:
    it reads the embedding c, so the null embedding's gradient is not zero. No weights to train."""

    def __init__(self, W: torch.Tensor):
        super().__init__()
        self.register_buffer("W", W)

    @property
    def dtype(self):
        return self.W.dtype

    def forward(self, z, t, encoder_hidden_states):
        from types import SimpleNamespace

        eps = torch.tanh(encoder_hidden_states.reshape(1, -1) @ self.W).reshape(z.shape) + 0.5 * z
        return SimpleNamespace(sample=eps)


def optimise_cases(seed: int = 0) -> list[dict]:
    """One timestep of null-text inversion on a toy noise predictor: the null embedding (1, L, D),
    the prompt's, z_t and z*_prev, and the Adam settings. Thresholds 0 (every inner step runs) and
    1e9 (the first step already stops it)."""
    from .ldm import ddim_cases

    g = torch.Generator().manual_seed(seed)
    cases = []
    for c, (n_inner, threshold, w) in zip(ddim_cases(seed, (10, 20), ((1, 4, 4, 4),)),
                                          ((5, 0.0, 7.5), (4, 1e9, 4.0), (3, 0.0, 2.5))):
        shape = c["z_t"].shape
        L, D = 4, 6
        cases.append(dict(null=torch.randn(1, L, D, generator=g), cond=torch.randn(1, L, D, generator=g),
                          z_t=c["z_t"], z_target=torch.randn(shape, generator=g),
                          W=torch.randn(L * D, shape.numel(), generator=g) * 0.3, guidance_scale=w, lr=0.05,
                          num_inner_steps=n_inner, threshold=threshold, _scheduler=c["scheduler"], _t=c["t"]))
    return cases


def _student_inputs(null, cond, z_t, z_target, W, guidance_scale, lr, num_inner_steps, threshold, _scheduler, _t):
    """What the exercise's function receives: eps_uncond_of(u) (differentiable in u), eps_cond, abar pair."""
    from ..ldm import abar_pair

    unet = _ToyUNet(W)
    with torch.no_grad():
        eps_cond = unet(z_t, _t, encoder_hidden_states=cond).sample
    abar_t, abar_prev = abar_pair(_scheduler, _t)
    return (lambda u: unet(z_t, _t, encoder_hidden_states=u).sample), eps_cond, abar_t, abar_prev


@answer
def _optimise_reference(null, cond, z_t, z_target, W, guidance_scale, lr, num_inner_steps, threshold, _scheduler, _t):
    """The package's own inner loop (p2p_lab.p2p.inversion.optimise_null) on the toy predictor."""
    from ..p2p.inversion import optimise_null

    u, _, steps = optimise_null(_ToyUNet(W), _scheduler, z_t, _t, cond, null, guidance_scale, z_target, lr,
                                num_inner_steps, threshold)
    return u, torch.tensor(float(steps))


@answer
def _optimise_wrong(zero_grad=True, stop_first=False, early_stop=True, start_zero=False):
    """The inner loop with one typical mistake, written from the formulas (torch's Adam)."""
    def compute(null, cond, z_t, z_target, W, guidance_scale, lr, num_inner_steps, threshold, _scheduler, _t):
        eps_of, eps_c, abar_t, abar_prev = _student_inputs(null, cond, z_t, z_target, W, guidance_scale, lr,
                                                           num_inner_steps, threshold, _scheduler, _t)
        u = (torch.zeros_like(null) if start_zero else null.clone()).requires_grad_(True)
        opt, steps = torch.optim.Adam([u], lr=lr), 0
        with torch.enable_grad():
            for steps in range(1, num_inner_steps + 1):
                eps = eps_of(u) + guidance_scale * (eps_c - eps_of(u))
                z0 = (z_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
                loss = ((abar_prev.sqrt() * z0 + (1 - abar_prev).sqrt() * eps - z_target) ** 2).mean()
                if stop_first and early_stop and loss.item() < threshold:
                    break
                if zero_grad:
                    opt.zero_grad()
                loss.backward()
                opt.step()
                if early_stop and not stop_first and loss.item() < threshold:
                    break
        return u.detach(), torch.tensor(float(steps))
    return compute


OPTIMISE_MISTAKES = (
    Mistake("no_zero_grad", _optimise_wrong(zero_grad=False),
            "the gradients pile up from one inner step to the next: call opt.zero_grad() before loss.backward()"),
    Mistake("stops_before_step", _optimise_wrong(stop_first=True),
            "you stop before taking the Adam step: compute the loss, step, and only then stop if the loss "
            "(before that step) was below the threshold"),
    Mistake("no_early_stop", _optimise_wrong(early_stop=False),
            "stop once the loss is below `threshold` (after that step): the paper's early stop"),
    Mistake("starts_from_zero", _optimise_wrong(start_zero=True),
            "start from the embedding you are given, `null` (the previous timestep's), not from zeros"),
)


def check_optimise_null(fn) -> CheckResult:
    """``fn(eps_uncond_of, null, z_t, eps_cond, guidance_scale, abar_t, abar_prev, z_target, lr,
    num_inner_steps, threshold)`` -> (the optimised null embedding, the Adam steps taken), against
    the package's inner loop on a toy noise predictor."""
    def student(null, cond, z_t, z_target, W, guidance_scale, lr, num_inner_steps, threshold, _scheduler, _t):
        eps_of, eps_c, abar_t, abar_prev = _student_inputs(null, cond, z_t, z_target, W, guidance_scale, lr,
                                                           num_inner_steps, threshold, _scheduler, _t)
        out = fn(eps_of, null.clone(), z_t.clone(), eps_c, guidance_scale, abar_t.clone(), abar_prev.clone(),
                 z_target.clone(), lr, num_inner_steps, threshold)
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError(f"return two things, (null, steps): the optimised embedding and the number of Adam "
                            f"steps taken; got {type(out).__name__}")
        u, steps = out
        if not isinstance(u, torch.Tensor):
            raise TypeError(f"the embedding you return is a {type(u).__name__}; return the tensor u (u.detach())")
        return u.detach(), torch.tensor(float(steps))

    return run_check("optimise_null", student, _optimise_reference, optimise_cases(), OPTIMISE_MISTAKES,
                     atol=1e-5, forbidden=FORBIDDEN["optimise_null"])


def run_null_text(pipe, image, prompt: str, optimise_fn, *, num_inference_steps: int, guidance_scale: float,
                  first: int | None = None, num_inner_steps: int = 10, early_stop: float = 1e-5, lr: float = 1e-2,
                  trajectory=None):
    """Null-text inversion with YOUR inner loop ``optimise_fn`` (the exercise's signature) at every
    timestep, on the DDIM trajectory of ``image``, with the package's schedule of learning rates
    (lr (1 - i / 100)) and early stops (early_stop + 2e-5 i). ``first``: only the first so many
    timesteps (their null embeddings are still comparable with ``p2p.invert(..., "null-text")``'s).
    Returns (null embeddings (k, L, D) on the CPU, the reconstruction (H, W, 3) or None when ``first``
    cuts the loop short). ``trajectory``: the DDIM inversion's latents z*_0 .. z*_T (a "ddim"
    Inversion's ``latents``), computed here if None."""
    from .. import ldm, p2p
    from ..p2p.inversion import NULL_TEXT_STOP_SLOPE, frozen_weights

    if trajectory is None:
        trajectory = p2p.invert(pipe, image, prompt, "ddim", num_inference_steps=num_inference_steps,
                                guidance_scale=guidance_scale).latents
    unet, device, dtype = pipe.unet, ldm.pipe_device(pipe), ldm.pipe_dtype(pipe)
    scheduler = ldm.fresh_scheduler(pipe, num_inference_steps)
    cond = ldm.encode_text(pipe, [prompt])  # (1, L, D)
    null = ldm.encode_text(pipe, [""]).float()  # (1, L, D)
    n = len(scheduler.timesteps)
    k = n if first is None else min(int(first), n)
    z, nulls = trajectory[-1].to(device, dtype), []
    for i, t in list(enumerate(scheduler.timesteps))[:k]:
        z_in = scheduler.scale_model_input(z, t)
        with torch.no_grad():
            eps_c = unet(z_in, t, encoder_hidden_states=cond.to(dtype)).sample.float()
        abar_t, abar_prev = ldm.abar_pair(scheduler, t)

        def eps_of(u, z_in=z_in, t=t):
            return unet(z_in, t, encoder_hidden_states=u.to(dtype)).sample.float()

        with torch.enable_grad(), frozen_weights(unet):
            null, _ = optimise_fn(eps_of, null, z.float(), eps_c, guidance_scale, abar_t.to(device), abar_prev.to(device),
                                  trajectory[n - 1 - i].to(device).float(), lr * (1 - i / 100), num_inner_steps,
                                  early_stop + NULL_TEXT_STOP_SLOPE * i)
        null = null.detach().float()
        nulls.append(null.cpu())
        with torch.no_grad():
            z = ldm.denoise_step(unet, scheduler, z, t, torch.cat([null.to(dtype), cond.to(dtype)]), guidance_scale).prev
    recon = ldm.to_numpy(ldm.decode(pipe, z))[0] if k == n else None
    return torch.cat(nulls), recon
