"""When the source's maps are used: tau as a fraction of sampling steps, per word, and as a timestep.

Taught in notebook 05 (Algorithm 1: Edit(A_t, A*_t, t) = A_t while t >= tau, else A*_t). Code takes
tau as the *fraction of sampling steps* that use the source's maps, counted by the sampling loop's
step index, so every scheduler schedules it the same way. :func:`tau_to_timestep` converts to the
slides' timestep tau.
"""
from __future__ import annotations

import math
import numbers

import torch

from .align import token_indices

DEFAULT_KEY = "default_"


def _fraction(x, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{what} must be a number in [0, 1] or a (start, end) pair, got {x!r}")
    if not 0.0 <= float(x) <= 1.0:
        raise ValueError(f"{what} = {x} is outside [0, 1]; it is a fraction of the sampling steps")
    return float(x)


def window_bounds(tau, what: str = "tau") -> tuple[float, float]:
    """tau as (start, end) fractions: a float f means (0, f)."""
    if isinstance(tau, (tuple, list)):
        if len(tau) != 2:
            raise ValueError(f"{what} as a pair must be (start, end), got {tau!r}")
        start, end = _fraction(tau[0], what), _fraction(tau[1], what)
        if start > end:
            raise ValueError(f"{what} = {tuple(tau)} starts after it ends; use (start, end) with start <= end")
        return start, end
    return 0.0, _fraction(tau, what)


def step_window(tau, num_steps: int, what: str = "tau") -> torch.Tensor:
    """Bool (num_steps,): True at the loop steps i with start <= i / num_steps < end."""
    start, end = window_bounds(tau, what)
    first, last = (math.floor(round(f * num_steps, 6)) for f in (start, end))
    steps = torch.arange(num_steps)
    return (steps >= first) & (steps < last)


def alpha_schedule(tokenizer, prompt: str, cross_tau, num_steps: int) -> torch.Tensor:
    """alpha (num_steps, n_tokens): 1 where the SOURCE's cross-attention map is used for a token.

    ``cross_tau``: a float, a (start, end) pair, or {word: float | pair, "default_": float | pair}
    (per-word schedules; words are looked up in ``prompt``, the target). ``num_steps`` is the
    sampling loop's length, ``len(scheduler.timesteps)``: ``num_inference_steps`` for DDIM, Euler
    and DPM-Solver, a few more for PNDM's warm-up steps.
    """
    n_tokens = tokenizer.model_max_length
    per_word = dict(cross_tau) if isinstance(cross_tau, dict) else {DEFAULT_KEY: cross_tau}
    default = per_word.pop(DEFAULT_KEY, 1.0)
    alpha = step_window(default, num_steps, "cross_tau")[:, None].float().repeat(1, n_tokens)
    for word, tau in per_word.items():
        alpha[:, token_indices(tokenizer, prompt, word)] = step_window(tau, num_steps,
                                                                       f"cross_tau[{word!r}]")[:, None].float()
    return alpha  # (num_steps, n_tokens)


def scheduler_timesteps(pipe_or_scheduler, num_inference_steps: int) -> torch.Tensor:
    """The timesteps a fresh copy of the scheduler runs for ``num_inference_steps`` steps (on the CPU)."""
    from ..ldm import fresh_scheduler

    return fresh_scheduler(pipe_or_scheduler, num_inference_steps).timesteps.cpu()


def tau_to_timestep(pipe_or_scheduler, tau_fraction: float, num_inference_steps: int) -> int:
    """The slides' tau (a timestep) for a fraction of steps: the source's maps are used while t >= tau.

    Returns the last timestep that still uses the source's maps; for a fraction that uses them at
    no step, a timestep above every sampled one (the scheduler's ``num_train_timesteps``).
    """
    ts = scheduler_timesteps(pipe_or_scheduler, num_inference_steps)
    k = int(step_window(tau_fraction, len(ts), "tau_fraction").sum())
    if k == 0:
        sch = getattr(pipe_or_scheduler, "scheduler", pipe_or_scheduler)
        return int(sch.config.num_train_timesteps)
    return int(ts[k - 1])


def timestep_to_tau(pipe_or_scheduler, tau_timestep: int, num_inference_steps: int) -> float:
    """The fraction of sampling steps whose timestep t satisfies t >= ``tau_timestep``."""
    ts = scheduler_timesteps(pipe_or_scheduler, num_inference_steps)
    return float((ts >= tau_timestep).sum()) / len(ts)
