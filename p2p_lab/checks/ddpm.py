"""Public checks of notebook 03_ddpm: closed-form sample, posterior, x_0 from eps, eps-mean, loss.

Every exercise takes a :class:`p2p_lab.ddpm.Schedule` ``sched`` whose tables are indexed by t
itself (``sched.abar[t]`` is abar_t, ``sched.abar[t - 1]`` is abar_{t-1}). The references are the
package's own functions in :mod:`p2p_lab.ddpm`, which the tests hold against diffusers and closed
forms. Each ``Mistake`` computes what a typical wrong solution computes; the hint names it.
"""
from __future__ import annotations

import torch

from .. import ddpm
from ._core import Mistake, answer, run_check

__all__ = ["check_q_sample", "check_posterior_coefficients", "check_x0_from_eps",
           "check_mean_from_eps", "check_reverse_step", "check_ddpm_loss"]

# The package's (and diffusers') own implementations of what notebook 03 asks, per exercise:
# blocked while a student's function runs, in the public checks and in the grader's hidden tests.
FORBIDDEN = {
    "q_sample": ("p2p_lab.ddpm.q_sample", "p2p_lab.ddpm.add_noise", "diffusers.DDPMScheduler.add_noise"),
    "posterior_coefficients": ("p2p_lab.ddpm.posterior_coefficients",),
    "x0_from_eps": ("p2p_lab.ddpm.x0_from_eps", "p2p_lab.ddpm.x0_from_noise", "diffusers.DDPMScheduler.step"),
    "mean_from_eps": ("p2p_lab.ddpm.mean_from_eps", "p2p_lab.ddpm.posterior_mean", "p2p_lab.ddpm.reverse_step",
                      "diffusers.DDPMScheduler.step"),
    "reverse_step": ("p2p_lab.ddpm.reverse_step", "p2p_lab.ddpm.sample_chain", "diffusers.DDPMScheduler.step"),
    "ddpm_loss": ("p2p_lab.ddpm.ddpm_loss", "p2p_lab.ddpm.training_loss"),
}



def _tab(sched, t, x, shift=0, table="abar"):
    """sched.<table>[t + shift] broadcast against x (what a solution with that index computes)."""
    return ddpm.gather(getattr(sched, table), t + shift, x)


# ---------------------------------------------------------------- cases

def _schedules():
    """A standard schedule and a short, coarse one where abar_t and abar_{t-1} differ a lot."""
    return ddpm.Schedule.linear(1000), ddpm.Schedule(torch.tensor([0.05, 0.1, 0.2, 0.3, 0.4, 0.5]))


def sample_cases(seed: int = 0, shapes=((3, 4, 4), (5, 2), (2, 3, 6, 6)), ts=(400, 3, 999)) -> list[dict]:
    """Cases for q_sample and x0_from_eps style functions: x (the data or x_t), int t, eps, sched."""
    gen = torch.Generator().manual_seed(seed)
    long, short = _schedules()
    cases = []
    for shape, t in zip(shapes, ts):
        sched = short if t <= short.T else long
        x, eps = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
        cases.append({"t": t, "eps": eps, "sched": sched, "x": x})
    return cases


def _rename(cases, name):
    return [{(name if k == "x" else k): v for k, v in c.items()} for c in cases]


def posterior_cases(ts=((2, "short"), (500, "long"), (5, "short"), (1, "short"))) -> list[dict]:
    long, short = _schedules()
    return [{"t": t, "sched": short if which == "short" else long} for t, which in ts]


class _ToyEpsModel:
    """A fixed, deterministic stand-in for eps_theta(x_t, t): elementwise, depends on x_t and t."""

    def __init__(self, T: int):
        self.T = T

    def __call__(self, x_t, t):
        scale = (t.to(x_t.dtype) / self.T).view(-1, *([1] * (x_t.dim() - 1)))  # (batch, 1, ...)
        return torch.tanh(0.8 * x_t + 1.5 * scale) - 0.3 * scale

    def __repr__(self):
        return "a fixed toy eps_model"


def loss_cases(seed: int = 0, shapes=((6, 2), (4, 3, 5, 5), (3, 2))) -> list[dict]:
    """Cases for ddpm_loss: eps_model, x_0 (batch, ...), t (batch,) in 1..T, eps, sched."""
    gen = torch.Generator().manual_seed(seed)
    long, short = _schedules()
    cases = []
    for i, shape in enumerate(shapes):
        sched = long if i % 2 == 0 else short
        t = torch.randint(1, sched.T + 1, (shape[0],), generator=gen)  # (batch,)
        cases.append({"eps_model": _ToyEpsModel(sched.T), "x_0": torch.randn(shape, generator=gen),
                      "t": t, "eps": torch.randn(shape, generator=gen), "sched": sched})
    return cases


# ---------------------------------------------------------------- 1. closed-form sample (Property 1)

@answer
def q_sample_reference(x_0, t, eps, sched):
    return ddpm.q_sample(x_0, t, eps, sched)


@answer
def _q_wrong(signal, noise, shift=0, table="abar"):
    def compute(x_0, t, eps, sched):
        a = _tab(sched, t, x_0, shift, table)
        return signal(a) * x_0 + noise(a) * eps
    return compute


_SQRT_NOISE_HINT = ("the noise coefficient is sqrt(1 - abar_t), not 1 - abar_t. The slides' Property 1 "
                    "drops the square root (their Algorithm 1 has it): x_t must have variance 1 - abar_t")
Q_SAMPLE_MISTAKES = (
    Mistake("slides_noise_without_sqrt", _q_wrong(torch.sqrt, lambda a: 1 - a), _SQRT_NOISE_HINT),
    Mistake("signal_without_sqrt", _q_wrong(lambda a: a, lambda a: (1 - a).sqrt()),
            "the signal coefficient is sqrt(abar_t): the mean of q(x_t | x_0) is sqrt(abar_t) x_0"),
    Mistake("alpha_for_abar", _q_wrong(torch.sqrt, lambda a: (1 - a).sqrt(), table="alpha"),
            "you used alpha_t (one step's factor); jumping from x_0 straight to x_t needs "
            "abar_t = alpha_1 * ... * alpha_t, i.e. sched.abar[t]"),
    Mistake("t_minus_one", _q_wrong(torch.sqrt, lambda a: (1 - a).sqrt(), shift=-1),
            "off by one: you used abar_{t-1}. The tables are indexed by t itself (entry 0 is t = 0, "
            "no noise), so abar_t is sched.abar[t]; diffusers' zero-based timestep k is t - 1"),
    Mistake("t_plus_one", _q_wrong(torch.sqrt, lambda a: (1 - a).sqrt(), shift=1),
            "off by one: you used abar_{t+1}. The tables are indexed by t itself, so abar_t is sched.abar[t]"),
    Mistake("minus_noise", _q_wrong(torch.sqrt, lambda a: -(1 - a).sqrt()),
            "sign error: the noise is added, x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps; with the "
            "minus sign the eps a model learns to predict would be the negative of the true one"),
    Mistake("coefficients_swapped", _q_wrong(lambda a: (1 - a).sqrt(), torch.sqrt),
            "the coefficients are swapped: x_0 gets sqrt(abar_t) (large at small t) and eps gets sqrt(1 - abar_t)"),
)


def check_q_sample(fn, cases=None):
    """Exercise 1: ``q_sample(x_0, t, eps, sched)`` -> x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
    cases = cases or _rename(sample_cases(1), "x_0")
    return run_check("q_sample", fn, q_sample_reference, cases, Q_SAMPLE_MISTAKES, forbidden=FORBIDDEN["q_sample"])


# ---------------------------------------------------------------- 2. posterior (Property 2)

@answer
def posterior_reference(t, sched):
    return ddpm.posterior_coefficients(t, sched)


@answer
def _post_wrong(prev_shift=-1, shift=0, table="abar", x0_abar=None, xt_alpha=None, var=None,
                root=torch.sqrt, order=(0, 1, 2)):
    def compute(t, sched):
        tab = getattr(sched, table)  # sched.alpha here writes alpha where abar belongs
        alpha_t, abar_t, abar_prev = sched.alpha[t + shift], tab[t + shift], tab[t + shift + prev_shift]
        a0 = sched.abar[t] if x0_abar == "t" else abar_prev
        at = sched.abar[t] if xt_alpha == "abar" else alpha_t
        c0 = root(a0) * (1 - alpha_t) / (1 - abar_t)
        ct = root(at) * (1 - abar_prev) / (1 - abar_t)
        v = (1 - abar_prev) * (1 - alpha_t) / (1 - abar_t)
        v = {None: v, "beta": 1 - alpha_t, "std": v.sqrt()}[var]
        out = (c0, ct, v)
        return tuple(out[i] for i in order)
    return compute


POSTERIOR_MISTAKES = (
    Mistake("slides_abar_t_in_x0_coef", _post_wrong(x0_abar="t"),
            "the x_0 coefficient is sqrt(abar_{t-1}) (1 - alpha_t) / (1 - abar_t): abar_{t-1} "
            "(sched.abar[t - 1]), not abar_t. The slides print abar_t there; that is a typo"),
    Mistake("abar_for_alpha_in_xt_coef", _post_wrong(xt_alpha="abar"),
            "the x_t coefficient is sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t): one step's "
            "alpha_t under the root, not abar_t"),
    Mistake("variance_is_beta", _post_wrong(var="beta"),
            "the posterior variance is (1 - abar_{t-1}) (1 - alpha_t) / (1 - abar_t), which is smaller "
            "than beta_t = 1 - alpha_t; you returned beta_t (did you write abar_t where abar_{t-1} belongs?)"),
    Mistake("std_for_variance", _post_wrong(var="std"),
            "the third output is the variance sigma_t^2, not its square root"),
    Mistake("coefficients_swapped", _post_wrong(order=(1, 0, 2)),
            "return (coef_x0, coef_xt, var) in that order: the first multiplies x_0, the second x_t"),
    Mistake("no_square_roots", _post_wrong(root=lambda a: a),
            "both mean coefficients carry a square root: sqrt(abar_{t-1}) on x_0's and sqrt(alpha_t) on x_t's"),
    Mistake("t_plus_one", _post_wrong(shift=1),
            "off by one: you used step t + 1's values. The tables are indexed by t itself: alpha_t is "
            "sched.alpha[t], abar_t is sched.abar[t], abar_{t-1} is sched.abar[t - 1]"),
    Mistake("alpha_for_abar_everywhere", _post_wrong(table="alpha"),
            "alpha vs abar: only the x_t coefficient's root and the (1 - alpha_t) factors use one step's "
            "alpha_t; every (1 - abar_...) term uses the cumulative product abar = sched.abar"),
)


def check_posterior_coefficients(fn, cases=None):
    """Exercise 2: ``posterior_coefficients(t, sched)`` -> (coef_x0, coef_xt, var) of q(x_{t-1} | x_t, x_0)."""
    return run_check("posterior_coefficients", fn, posterior_reference, cases or posterior_cases(),
                     POSTERIOR_MISTAKES, forbidden=FORBIDDEN["posterior_coefficients"])


# ---------------------------------------------------------------- 3. x_0 from eps

@answer
def x0_reference(x_t, t, eps, sched):
    return ddpm.x0_from_eps(x_t, t, eps, sched)


@answer
def _x0_wrong(noise_sign=-1.0, noise=lambda a: (1 - a).sqrt(), divide=torch.sqrt, shift=0, table="abar"):
    def compute(x_t, t, eps, sched):
        a = _tab(sched, t, x_t, shift, table)
        return (x_t + noise_sign * noise(a) * eps) / divide(a)
    return compute


X0_MISTAKES = (
    Mistake("slides_formula", _x0_wrong(noise_sign=1.0, noise=lambda a: 1 - a),
            "the slides' rearrangement is garbled. Solve x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps "
            "for x_0: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (minus sign, square root)"),
    Mistake("plus_noise", _x0_wrong(noise_sign=1.0),
            "sign error: to get x_0 back, subtract the noise: (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)"),
    Mistake("noise_without_sqrt", _x0_wrong(noise=lambda a: 1 - a),
            "the noise coefficient is sqrt(1 - abar_t), not 1 - abar_t (the slides drop the root)"),
    Mistake("divide_without_sqrt", _x0_wrong(divide=lambda a: a),
            "divide by sqrt(abar_t), the coefficient of x_0 in x_t, not by abar_t"),
    Mistake("alpha_for_abar", _x0_wrong(table="alpha"),
            "alpha vs abar: x_t came from x_0 in one jump with abar_t (sched.abar[t]), not alpha_t"),
    Mistake("t_minus_one", _x0_wrong(shift=-1),
            "off by one: abar_t is sched.abar[t] (tables are indexed by t itself), you used abar_{t-1}"),
)


def check_x0_from_eps(fn, cases=None):
    """Exercise 3: ``x0_from_eps(x_t, t, eps, sched)`` -> (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    return run_check("x0_from_eps", fn, x0_reference, cases or _rename(sample_cases(2), "x_t"), X0_MISTAKES, forbidden=FORBIDDEN["x0_from_eps"])


# ---------------------------------------------------------------- 4. eps-parameterised mean (Property 3)

@answer
def mean_reference(x_t, t, eps, sched):
    return ddpm.mean_from_eps(x_t, t, eps, sched)


@answer
def _mean_wrong(sign=-1.0, noise=lambda al, ab: (1 - al) / (1 - ab).sqrt(), outer=lambda al, ab: al.sqrt(),
                shift=0):
    def compute(x_t, t, eps, sched):
        al, ab = _tab(sched, t, x_t, shift, "alpha"), _tab(sched, t, x_t, shift, "abar")
        return (x_t + sign * noise(al, ab) * eps) / outer(al, ab)
    return compute


MEAN_MISTAKES = (
    Mistake("plus_noise", _mean_wrong(sign=1.0),
            "sign error: the mean removes predicted noise, mu = (x_t - (1 - alpha_t)/sqrt(1 - abar_t) eps) / sqrt(alpha_t)"),
    Mistake("noise_without_sqrt", _mean_wrong(noise=lambda al, ab: (1 - al) / (1 - ab)),
            "the noise coefficient is (1 - alpha_t) / sqrt(1 - abar_t): a square root in the denominator"),
    Mistake("abar_for_alpha_outside", _mean_wrong(outer=lambda al, ab: ab.sqrt()),
            "alpha vs abar: one reverse step divides by sqrt(alpha_t) (one step's factor), not sqrt(abar_t)"),
    Mistake("alpha_for_abar_in_noise", _mean_wrong(noise=lambda al, ab: (1 - al) / (1 - al).sqrt()),
            "alpha vs abar: the noise coefficient's denominator is sqrt(1 - abar_t), the cumulative product"),
    Mistake("abar_for_alpha_in_noise", _mean_wrong(noise=lambda al, ab: (1 - ab) / (1 - ab).sqrt()),
            "alpha vs abar: the numerator of the noise coefficient is 1 - alpha_t = beta_t (one step), not 1 - abar_t"),
    Mistake("no_outer_division", _mean_wrong(outer=lambda al, ab: torch.ones_like(al)),
            "divide the whole bracket (x_t - ... eps) by sqrt(alpha_t)"),
    Mistake("returns_x0", lambda x_t, t, eps, sched: ddpm.x0_from_eps(x_t, t, eps, sched),
            "that is the predicted x_0, not the mean of x_{t-1}; the mean only removes a little noise: "
            "(x_t - (1 - alpha_t)/sqrt(1 - abar_t) eps) / sqrt(alpha_t)"),
    Mistake("t_minus_one", _mean_wrong(shift=-1),
            "off by one: alpha_t is sched.alpha[t] and abar_t is sched.abar[t] (tables are indexed by t itself)"),
)


def check_mean_from_eps(fn, cases=None):
    """Exercise 4: ``mean_from_eps(x_t, t, eps, sched)`` -> (x_t - (1 - alpha_t)/sqrt(1 - abar_t) eps) / sqrt(alpha_t)."""
    return run_check("mean_from_eps", fn, mean_reference, cases or _rename(sample_cases(3), "x_t"), MEAN_MISTAKES, forbidden=FORBIDDEN["mean_from_eps"])


# ---------------------------------------------------------------- 5. the loss of Algorithm 1

@answer
def loss_reference(eps_model, x_0, t, eps, sched):
    return ddpm.ddpm_loss(eps_model, x_0, t, eps, sched)


@answer
def _loss_wrong(model_input="x_t", target="eps", reduce="mean", noise=lambda a: (1 - a).sqrt(), shift=0):
    def compute(eps_model, x_0, t, eps, sched):
        a = _tab(sched, t, x_0, shift)
        x_t = a.sqrt() * x_0 + noise(a) * eps
        pred = eps_model(x_t if model_input == "x_t" else x_0, t)
        err = pred - (eps if target == "eps" else x_0)
        return {"mean": err.pow(2).mean(), "sum": err.pow(2).sum(), "abs": err.abs().mean()}[reduce]
    return compute


LOSS_MISTAKES = (
    Mistake("sum_not_mean", _loss_wrong(reduce="sum"),
            "average the squared error over all entries (F.mse_loss); the slides' ||.||^2 sums, which "
            "only rescales the gradient, but this exercise asks for the mean"),
    Mistake("target_x0", _loss_wrong(target="x0"),
            "the target is the noise eps that made x_t, not x_0: the model predicts eps"),
    Mistake("model_sees_x0", _loss_wrong(model_input="x_0"),
            "feed the model the noisy x_t (and t), not the clean x_0: it must guess the noise from x_t"),
    Mistake("noise_without_sqrt", _loss_wrong(noise=lambda a: 1 - a),
            "x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps: the slides' Property 1 drops the root on the "
            "noise coefficient (their Algorithm 1, line 6, has it)"),
    Mistake("absolute_error", _loss_wrong(reduce="abs"),
            "square the error: the loss is the mean of (eps - eps_theta)^2, not of |eps - eps_theta|"),
    Mistake("t_minus_one", _loss_wrong(shift=-1),
            "off by one: abar_t is sched.abar[t] (tables are indexed by t itself)"),
)


def check_ddpm_loss(fn, cases=None):
    """Exercise 6: ``ddpm_loss(eps_model, x_0, t, eps, sched)`` -> mean (eps - eps_model(x_t, t))^2."""
    return run_check("ddpm_loss", fn, loss_reference, cases or loss_cases(4), LOSS_MISTAKES, forbidden=FORBIDDEN["ddpm_loss"])


# ---------------------------------------------------------------- the reverse (ancestral) step

def reverse_cases(seed: int = 0, ts=(1, 2, 5, 400, 1000)) -> list[dict]:
    """x_t, t, eps_pred, sched, z for reverse steps, t = 1 (no noise left to add) included."""
    gen = torch.Generator().manual_seed(seed)
    long, short = _schedules()
    cases = []
    for t in ts:
        sched = short if t <= short.T else long
        shape = (2, 3, 4, 4)
        cases.append({"x_t": torch.randn(shape, generator=gen), "t": t, "eps_pred": torch.randn(shape, generator=gen),
                      "sched": sched, "z": torch.randn(shape, generator=gen)})
    return cases


@answer
def reverse_reference(x_t, t, eps_pred, sched, z):
    return ddpm.reverse_step(x_t, t, eps_pred, sched, noise=z)


@answer
def _reverse_wrong(sigma):
    def compute(x_t, t, eps_pred, sched, z):
        return ddpm.mean_from_eps(x_t, t, eps_pred, sched) + sigma(x_t, t, sched) * z
    return compute


@answer
def _posterior_var(x_t, t, sched):
    return ddpm.posterior_coefficients(t, sched)[2].to(x_t.dtype)


REVERSE_MISTAKES = (
    Mistake("no_noise", _reverse_wrong(lambda x, t, s: 0.0),
            "that is the mean alone: ancestral sampling adds sigma_t z, with sigma_t^2 the posterior's "
            "variance (1 - abar_{t-1}) / (1 - abar_t) beta_t"),
    Mistake("variance_not_std", _reverse_wrong(_posterior_var),
            "scale z by the standard deviation sigma_t, the square root of the posterior's variance"),
    Mistake("beta_variance", _reverse_wrong(lambda x, t, s: _tab(s, t, x, 0, "beta").sqrt()),
            "sigma_t^2 here is the posterior's variance (1 - abar_{t-1}) / (1 - abar_t) beta_t (Property "
            "2), not beta_t itself (the other choice of the DDPM paper, which adds noise even at t = 1)"),
    Mistake("minus_noise", _reverse_wrong(lambda x, t, s: -_posterior_var(x, t, s).sqrt()),
            "add sigma_t z, do not subtract it (z is symmetric, but the check fixes z)"),
    Mistake("x0_instead_of_mean", lambda x_t, t, eps_pred, sched, z: ddpm.x0_from_eps(x_t, t, eps_pred, sched)
            + _posterior_var(x_t, t, sched).sqrt() * z,
            "start from the eps-mean mu_theta(x_t, t), not from the predicted x_0"),
)


def check_reverse_step(fn, cases=None):
    """Exercise 5: ``reverse_step(x_t, t, eps_pred, sched, z)`` -> x_{t-1} = mu_theta(x_t, t) + sigma_t z."""
    return run_check("reverse_step", fn, reverse_reference, cases or reverse_cases(), REVERSE_MISTAKES, forbidden=FORBIDDEN["reverse_step"])
