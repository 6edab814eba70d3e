"""DDPM: the forward (noising) process, its closed form, the posterior and the eps-parameterised mean.

Taught in notebook ``03_ddpm``. Notation follows the course (and the lecture slides):

* ``t`` counts ``1..T`` like the slides: ``x_0`` is the data, ``x_T`` is (almost) pure noise.
  diffusers counts its ``timestep`` ``k = 0..T-1``; our ``t`` is ``k + 1`` (see :func:`to_diffusers`).
* ``beta_t`` is the noise added at step ``t``, ``alpha_t = 1 - beta_t``, ``abar_t = prod_{s<=t} alpha_s``.
* Every table of a :class:`Schedule` has ``T + 1`` entries, indexed by ``t`` itself, with the
  ``t = 0`` entry filled in by convention (``beta_0 = 0``, ``alpha_0 = abar_0 = 1``: no noise yet).
  So ``sched.abar[t]`` is abar_t and ``sched.abar[t - 1]`` is abar_{t-1}, as written on the page.

The lecture slides have three broken formulas; the functions here implement the correct ones:
Property 1's noise coefficient is ``sqrt(1 - abar_t)`` (not ``1 - abar_t``), ``x_0 = (x_t -
sqrt(1 - abar_t) eps) / sqrt(abar_t)``, and the posterior mean's ``x_0`` coefficient uses
``abar_{t-1}`` (not ``abar_t``).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable

import torch
from torch import nn

__all__ = [
    "Schedule", "linear_betas", "scaled_linear_betas", "gather", "to_diffusers", "snr",
    "forward_step", "forward_chain", "q_sample", "posterior_coefficients", "posterior_mean",
    "x0_from_eps", "mean_from_eps", "reverse_step", "sample_chain", "ddpm_loss", "training_loss",
    "TinyEpsMLP", "toy_data_2d", "ToyTrainConfig", "train_eps_model",
]

Tensor = torch.Tensor


# ---------------------------------------------------------------- schedules

def linear_betas(T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> Tensor:
    """DDPM's linear schedule (Ho et al. 2020): ``beta_t`` evenly spaced from beta_1 to beta_T. Shape (T,)."""
    _check_T(T)
    return torch.linspace(beta_1, beta_T, T, dtype=torch.float64)


def scaled_linear_betas(T: int = 1000, beta_1: float = 0.00085, beta_T: float = 0.012) -> Tensor:
    """Stable Diffusion's "scaled linear" schedule: ``sqrt(beta_t)`` evenly spaced, then squared. Shape (T,)."""
    _check_T(T)
    return torch.linspace(beta_1 ** 0.5, beta_T ** 0.5, T, dtype=torch.float64) ** 2


def _check_T(T) -> None:
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive whole number of steps, got {T!r}")


@dataclasses.dataclass
class Schedule:
    """A fixed noise schedule: tables ``beta``, ``alpha``, ``abar`` of length T + 1, indexed by t.

    Build it from the T values beta_1..beta_T: ``Schedule(linear_betas(1000))``, or with
    :meth:`linear`, :meth:`scaled_linear`, :meth:`from_diffusers`.
    ``alpha_t = 1 - beta_t`` and ``abar_t = alpha_1 * ... * alpha_t`` (Property 1).
    """

    betas: Tensor  # (T,) beta_1..beta_T
    beta: Tensor = dataclasses.field(init=False, repr=False)  # (T + 1,) beta[0] = 0
    alpha: Tensor = dataclasses.field(init=False, repr=False)  # (T + 1,) alpha[0] = 1
    abar: Tensor = dataclasses.field(init=False, repr=False)  # (T + 1,) abar[0] = 1

    def __post_init__(self):
        betas = torch.as_tensor(self.betas, dtype=torch.float64).detach().cpu()
        if betas.dim() != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a 1-D sequence beta_1..beta_T, got shape {tuple(betas.shape)}")
        if not torch.isfinite(betas).all() or betas.min() <= 0 or betas.max() >= 1:
            raise ValueError(
                f"every beta_t must lie strictly between 0 and 1, got values in "
                f"[{betas.min().item():.3g}, {betas.max().item():.3g}]: beta_t <= 0 adds no noise "
                f"(or negative variance) and beta_t >= 1 wipes out the signal (alpha_t = 1 - beta_t <= 0)")
        self.betas = betas
        self.beta = torch.cat([betas.new_zeros(1), betas])
        self.alpha = 1.0 - self.beta
        self.abar = torch.cumprod(self.alpha, dim=0)

    @property
    def T(self) -> int:
        """The number of noising steps."""
        return self.betas.numel()

    @classmethod
    def linear(cls, T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> "Schedule":
        """DDPM's linear schedule (diffusers ``beta_schedule="linear"``)."""
        return cls(linear_betas(T, beta_1, beta_T))

    @classmethod
    def scaled_linear(cls, T: int = 1000, beta_1: float = 0.00085, beta_T: float = 0.012) -> "Schedule":
        """Stable Diffusion's schedule (diffusers ``beta_schedule="scaled_linear"``)."""
        return cls(scaled_linear_betas(T, beta_1, beta_T))

    @classmethod
    def from_diffusers(cls, scheduler) -> "Schedule":
        """The schedule of a diffusers scheduler (its ``betas``; its timestep k is our t = k + 1)."""
        return cls(scheduler.betas)


def snr(sched: Schedule) -> Tensor:
    """Signal-to-noise ratio of x_t: ``SNR_t = abar_t / (1 - abar_t)``. Shape (T + 1,), inf at t = 0."""
    return sched.abar / (1.0 - sched.abar)


def to_diffusers(t: int | Tensor) -> int | Tensor:
    """Our t (1..T, as on the slides) as a diffusers ``timestep`` (0..T-1): ``k = t - 1``."""
    return t - 1


# ---------------------------------------------------------------- input checks and broadcasting

def _check_x(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        kind = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
        raise TypeError(f"{name} must be a floating-point torch tensor, got {kind}; "
                        f"convert it with torch.as_tensor({name}, dtype=torch.float32)")


def _check_t(t, sched: Schedule, lowest: int = 1) -> None:
    if not isinstance(sched, Schedule):
        raise TypeError(f"sched must be a p2p_lab.ddpm.Schedule, got {type(sched).__name__}; "
                        f"build one with Schedule.linear() or Schedule.from_diffusers(scheduler)")
    if isinstance(t, torch.Tensor):
        if t.is_floating_point() or t.dtype == torch.bool or t.dim() > 1:
            raise TypeError(f"t must be an int or a 1-D integer tensor (one t per example), "
                            f"got a {t.dtype} tensor of shape {tuple(t.shape)}")
        lo, hi = (int(t.min()), int(t.max())) if t.numel() else (lowest, lowest)
    elif isinstance(t, numbers.Integral) and not isinstance(t, bool):
        lo = hi = int(t)
    else:
        raise TypeError(f"t must be an int or a 1-D integer tensor, got {type(t).__name__}")
    if lo < lowest or hi > sched.T:
        bad = lo if lo < lowest else hi
        raise ValueError(f"t = {bad} is out of range: this needs {lowest} <= t <= T = {sched.T}. "
                         f"t counts like the slides (x_0 is the data); diffusers' timestep k is t - 1")


def gather(table: Tensor, t: int | Tensor, x: Tensor) -> Tensor:
    """``table[t]`` shaped to broadcast against ``x`` and in x's dtype.

    int t: a 0-d tensor. t of shape (batch,): shape (batch, 1, ..., 1), one value per example.
    """
    values = table.to(x.device)[t].to(x.dtype)
    if isinstance(t, torch.Tensor) and t.dim() == 1:
        if x.dim() == 0 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t has {t.shape[0]} entries but x has shape {tuple(x.shape)}: give one t "
                             f"per example along x's first (batch) dimension, or a single int t")
        values = values.view(-1, *([1] * (x.dim() - 1)))  # (batch, 1, ..., 1)
    return values


def _same_shape(a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    _check_x(a_name, a)
    _check_x(b_name, b)
    if a.shape != b.shape:
        try:
            shape = torch.broadcast_shapes(a.shape, b.shape)
        except RuntimeError:
            shape = None
        if shape != a.shape:
            raise ValueError(f"{a_name} has shape {tuple(a.shape)} but {b_name} has shape "
                             f"{tuple(b.shape)}: they must match (one noise value per entry of {a_name})")


# ---------------------------------------------------------------- the forward process

def forward_step(x_prev: Tensor, t: int | Tensor, eps: Tensor, sched: Schedule) -> Tensor:
    """One step of the forward chain q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, (1 - alpha_t) I).

    ``x_t = sqrt(alpha_t) x_{t-1} + sqrt(1 - alpha_t) eps`` with eps ~ N(0, I).
    """
    _check_t(t, sched)
    _same_shape("x_prev", x_prev, "eps", eps)
    alpha_t = gather(sched.alpha, t, x_prev)
    return alpha_t.sqrt() * x_prev + (1 - alpha_t).sqrt() * eps


def forward_chain(x_0: Tensor, t: int, sched: Schedule, generator: torch.Generator | None = None) -> Tensor:
    """Run the forward chain from x_0 for t steps, drawing fresh noise at each step; returns x_t."""
    _check_x("x_0", x_0)
    _check_t(t, sched, lowest=0)
    x = x_0
    for s in range(1, int(t) + 1):
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = forward_step(x, s, eps, sched)
    return x


def add_noise(x_0: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
    """Property 1 at a given abar_t: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (abar broadcasts).

    The one place the forward-noising formula is written: :func:`q_sample`, the latent
    training loss (:func:`p2p_lab.finetune.diffusion_loss`) and the DDIM steps of
    :mod:`p2p_lab.ldm` (which re-noise their x_0 guess) call it.
    """
    return abar.sqrt() * x_0 + (1 - abar).sqrt() * eps


def x0_from_noise(x_t: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
    """Property 1 solved for x_0 at a given abar_t: ``x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``.

    The one place it is written: :func:`x0_from_eps`, :func:`p2p_lab.ldm.predict_x0` and the
    DDIM steps (forwards and backwards) call it.
    """
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


def q_sample(x_0: Tensor, t: int | Tensor, eps: Tensor, sched: Schedule) -> Tensor:
    """Property 1, closed form: x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).

    ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``. (The slides drop the square root on the noise
    coefficient; their Algorithm 1 has it.) Same as ``DDPMScheduler.add_noise(x_0, eps, t - 1)``.
    """
    _check_t(t, sched, lowest=0)
    _same_shape("x_0", x_0, "eps", eps)
    return add_noise(x_0, eps, gather(sched.abar, t, x_0))


# ---------------------------------------------------------------- the posterior and the reverse step

def posterior_coefficients(t: int, sched: Schedule) -> tuple[Tensor, Tensor, Tensor]:
    """Property 2: q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, var I). Returns the three.

    ``coef_x0 = sqrt(abar_{t-1}) (1 - alpha_t) / (1 - abar_t)``  (abar_{t-1}, not abar_t as on the slides)
    ``coef_xt = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)``
    ``var = sigma_t^2 = (1 - abar_{t-1}) (1 - alpha_t) / (1 - abar_t)``
    """
    _check_t(t, sched)
    alpha_t, abar_t, abar_prev = sched.alpha[t], sched.abar[t], sched.abar[t - 1]
    coef_x0 = abar_prev.sqrt() * (1 - alpha_t) / (1 - abar_t)
    coef_xt = alpha_t.sqrt() * (1 - abar_prev) / (1 - abar_t)
    var = (1 - abar_prev) * (1 - alpha_t) / (1 - abar_t)
    return coef_x0, coef_xt, var


def posterior_mean(x_t: Tensor, x_0: Tensor, t: int | Tensor, sched: Schedule) -> Tensor:
    """Property 2's mean: ``mu_tilde(x_t, x_0) = coef_x0 x_0 + coef_xt x_t``."""
    _check_t(t, sched)
    _same_shape("x_t", x_t, "x_0", x_0)
    alpha_t, abar_t = gather(sched.alpha, t, x_t), gather(sched.abar, t, x_t)
    abar_prev = gather(sched.abar, t - 1, x_t)
    coef_x0 = abar_prev.sqrt() * (1 - alpha_t) / (1 - abar_t)
    coef_xt = alpha_t.sqrt() * (1 - abar_prev) / (1 - abar_t)
    return coef_x0 * x_0 + coef_xt * x_t


def x0_from_eps(x_t: Tensor, t: int | Tensor, eps: Tensor, sched: Schedule) -> Tensor:
    """Property 1 solved for x_0: ``x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``.

    With a predicted eps this is the model's guess of the clean data (diffusers' ``pred_original_sample``).
    """
    _check_t(t, sched)
    _same_shape("x_t", x_t, "eps", eps)
    return x0_from_noise(x_t, eps, gather(sched.abar, t, x_t))


def mean_from_eps(x_t: Tensor, t: int | Tensor, eps: Tensor, sched: Schedule) -> Tensor:
    """Property 3, the eps-parameterised mean: ``mu = (x_t - (1 - alpha_t) / sqrt(1 - abar_t) eps) / sqrt(alpha_t)``.

    Equals :func:`posterior_mean` at ``x_0 = x0_from_eps(x_t, t, eps)``: exactly the posterior mean
    when eps is the true noise, and the learned mean mu_theta when eps is the model's prediction.
    """
    _check_t(t, sched)
    _same_shape("x_t", x_t, "eps", eps)
    alpha_t, abar_t = gather(sched.alpha, t, x_t), gather(sched.abar, t, x_t)
    return (x_t - (1 - alpha_t) / (1 - abar_t).sqrt() * eps) / alpha_t.sqrt()


def reverse_step(x_t: Tensor, t: int | Tensor, eps_pred: Tensor, sched: Schedule,
                 noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """One reverse DDPM step: ``x_{t-1} = mu_theta(x_t, t) + sigma_t z`` with z ~ N(0, I).

    mu_theta is :func:`mean_from_eps` at the predicted noise; ``sigma_t^2`` is the posterior
    variance of Property 2 (Sigma_theta = sigma_t^2 I), which is 0 at t = 1, so the last step adds
    no noise. Pass ``noise`` (z) to make the step reproducible, or a ``generator``.
    Same as ``DDPMScheduler(clip_sample=False).step(eps_pred, t - 1, x_t)`` with the same z.
    """
    mean = mean_from_eps(x_t, t, eps_pred, sched)  # checks t and shapes
    if noise is None:
        noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
    _same_shape("x_t", x_t, "noise", noise)
    abar_t, abar_prev = gather(sched.abar, t, x_t), gather(sched.abar, t - 1, x_t)
    var = (1 - abar_prev) * (1 - gather(sched.alpha, t, x_t)) / (1 - abar_t)
    return mean + var.sqrt() * noise


@torch.no_grad()
def sample_chain(eps_model: Callable[[Tensor, Tensor], Tensor], shape: tuple[int, ...], sched: Schedule,
                 generator: torch.Generator | None = None,
                 keep: tuple[int, ...] = ()) -> tuple[Tensor, dict[int, Tensor]]:
    """Ancestral sampling (notebook 03): x_T ~ N(0, I), then :func:`reverse_step` for t = T, ..., 1,
    x_{t-1} = mu_theta(x_t, t) + sigma_t z.

    ``eps_model(x_t, t)`` gets t as a (batch,) integer tensor. Returns x_0 and {t: x_t} for each t in ``keep``.
    """
    x = torch.randn(shape, generator=generator)  # (batch, ...) x_T
    kept = {sched.T: x.clone()} if sched.T in keep else {}
    for t in range(sched.T, 0, -1):
        t_batch = torch.full((shape[0],), t, dtype=torch.long)  # (batch,)
        x = reverse_step(x, t, eps_model(x, t_batch), sched, generator=generator)  # x_{t-1}
        if t - 1 in keep:
            kept[t - 1] = x.clone()
    return x, kept


# ---------------------------------------------------------------- training (Algorithm 1)

def ddpm_loss(eps_model: Callable[[Tensor, Tensor], Tensor], x_0: Tensor, t: Tensor, eps: Tensor,
              sched: Schedule) -> Tensor:
    """The loss of Algorithm 1 for given t and eps: ``mean (eps - eps_theta(x_t, t))^2``.

    x_t comes from Property 1, ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``. The slides'
    ``||eps - eps_theta||^2`` is summed over entries; like diffusers' training scripts we average
    (``F.mse_loss``), which only rescales the gradient. t: (batch,) integers in 1..T.
    """
    x_t = q_sample(x_0, t, eps, sched)
    return torch.nn.functional.mse_loss(eps_model(x_t, t), eps)


def training_loss(eps_model, x_0: Tensor, sched: Schedule, generator: torch.Generator | None = None) -> Tensor:
    """Lines 4-7 of Algorithm 1: t ~ Uniform(1..T), eps ~ N(0, I), then :func:`ddpm_loss`."""
    _check_x("x_0", x_0)
    t = torch.randint(1, sched.T + 1, (x_0.shape[0],), generator=generator)  # (batch,)
    eps = torch.randn(x_0.shape, generator=generator, dtype=x_0.dtype)
    return ddpm_loss(eps_model, x_0, t, eps, sched)


class TinyEpsMLP(nn.Module):
    """A small eps-prediction network for 2-D points: eps_theta(x_t, t) from x_t and sin/cos of t/T."""

    def __init__(self, T: int, dim: int = 2, hidden: int = 128, n_freq: int = 4):
        super().__init__()
        self.T, self.n_freq = T, n_freq
        self.net = nn.Sequential(nn.Linear(dim + 2 * n_freq, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def embed(self, t: Tensor) -> Tensor:
        freq = 2.0 ** torch.arange(self.n_freq, dtype=torch.float32)  # (n_freq,)
        angle = (t.float() / self.T)[:, None] * freq * math.pi  # (batch, n_freq)
        return torch.cat([angle.sin(), angle.cos()], dim=1)  # (batch, 2 n_freq)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([x_t, self.embed(t)], dim=1))  # (batch, dim)


def toy_data_2d(n: int, generator: torch.Generator | None = None) -> Tensor:
    """n 2-D points near the unit circle (a ring: easy to tell from the Gaussian noise). Shape (n, 2)."""
    angle = 2 * math.pi * torch.rand(n, generator=generator)  # (n,)
    ring = torch.stack([angle.cos(), angle.sin()], dim=1)  # (n, 2)
    return ring + 0.04 * torch.randn(n, 2, generator=generator)


@dataclasses.dataclass
class ToyTrainConfig:
    """How :func:`train_eps_model` trains the toy eps-model of notebook 03 (not the shipped model:
    that is :class:`p2p_lab.train.TrainConfig`)."""

    steps: int = 500  # optimiser steps (a few seconds on a CPU for TinyEpsMLP)
    batch: int = 512  # points per step
    lr: float = 2e-2  # Adam learning rate, cosine-decayed to 0
    seed: int = 0  # seeds the data, t and eps draws


def train_eps_model(model: nn.Module, data_fn: Callable[[int, torch.Generator], Tensor], sched: Schedule,
                    cfg: ToyTrainConfig = ToyTrainConfig()) -> list[float]:
    """Algorithm 1: repeat (draw x_0, t ~ U(1..T), eps ~ N(0, I); step on ||eps - eps_theta(x_t, t)||^2).

    ``data_fn(n, generator)`` draws n training examples. Returns the loss of every step.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    losses = []
    for _ in range(cfg.steps):
        loss = training_loss(model, data_fn(cfg.batch, gen), sched, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr_sched.step()
        losses.append(loss.item())
    return losses
