"""Plots for notebook 03_ddpm: schedule curves, x_t grids, the noising view, loss and 2-D samples.

Every function is pure: it takes data and returns a matplotlib Figure (widgets call these).
Images are tensors of shape (3, H, W) with values in [-1, 1], as a diffusion model sees them.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from .. import ddpm

__all__ = ["to_image", "plot_image_row", "plot_schedule", "plot_xt_grid", "plot_noising", "plot_loss_curve",
           "plot_points_2d", "plot_monte_carlo"]


def to_image(x: torch.Tensor) -> np.ndarray:
    """A (3, H, W) tensor in [-1, 1] as an (H, W, 3) array in [0, 1] for imshow (clipped)."""
    return ((x.detach().float().cpu().permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)


def plot_image_row(images: dict[str, torch.Tensor]) -> plt.Figure:
    """A row of (3, H, W) images in [-1, 1], each titled by its key."""
    fig, axes = plt.subplots(1, len(images), figsize=(1.7 * len(images), 1.9), squeeze=False)
    for ax, (title, x) in zip(axes[0], images.items()):
        ax.imshow(to_image(x), interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _as_dict(scheds) -> dict[str, ddpm.Schedule]:
    return {"schedule": scheds} if isinstance(scheds, ddpm.Schedule) else dict(scheds)


def _draw_schedule(ax_abar, ax_snr, scheds: dict, t: int | None) -> None:
    for name, sched in scheds.items():
        ts = np.arange(1, sched.T + 1)
        ax_abar.plot(ts, sched.abar[1:].numpy(), label=name)
        ax_snr.semilogy(ts, ddpm.snr(sched)[1:].numpy(), label=name)
    ax_abar.set(xlabel="t", ylabel=r"$\bar\alpha_t$", title=r"signal kept: $\bar\alpha_t$", ylim=(0, 1.02))
    ax_snr.set(xlabel="t", ylabel="SNR", title=r"SNR$_t = \bar\alpha_t / (1 - \bar\alpha_t)$")
    ax_snr.axhline(1.0, color="grey", lw=0.8, ls=":")
    if t is not None:
        for ax in (ax_abar, ax_snr):
            ax.axvline(t, color="k", lw=1.2, ls="--", label=f"t = {t}")
    ax_abar.legend(fontsize=8)


def plot_schedule(scheds, t: int | None = None) -> plt.Figure:
    """abar_t (left) and the signal-to-noise ratio on a log scale (right) for one or more schedules.

    ``scheds``: a Schedule or {name: Schedule}; ``t`` draws a dashed line at that step.
    """
    fig, (ax_abar, ax_snr) = plt.subplots(1, 2, figsize=(9, 3.2))
    _draw_schedule(ax_abar, ax_snr, _as_dict(scheds), t)
    fig.tight_layout()
    return fig


def plot_xt_grid(rows: dict[str, torch.Tensor], ts: list[int], sched: ddpm.Schedule,
                 eps: dict[str, torch.Tensor]) -> plt.Figure:
    """x_t = q_sample(x_0, t, eps) for each image (a row) at each t (a column)."""
    fig, axes = plt.subplots(len(rows), len(ts), figsize=(1.6 * len(ts), 1.7 * len(rows)), squeeze=False)
    for i, (name, x_0) in enumerate(rows.items()):
        for j, t in enumerate(ts):
            ax = axes[i, j]
            ax.imshow(to_image(ddpm.q_sample(x_0, t, eps[name], sched)), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(f"t = {t}", fontsize=9)
        axes[i, 0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    return fig


def plot_noising(images: dict[str, torch.Tensor], eps: dict[str, torch.Tensor], t: int,
                 sched: ddpm.Schedule) -> plt.Figure:
    """The widget's view: x_t of each image at step t beside the abar_t and SNR curves with t marked."""
    n = len(images)
    fig, axes = plt.subplots(1, n + 2, figsize=(3.0 * (n + 2), 3.0))
    for ax, (name, x_0) in zip(axes[:n], images.items()):
        ax.imshow(to_image(ddpm.q_sample(x_0, t, eps[name], sched)), interpolation="nearest")
        ax.set(xticks=[], yticks=[])
        ax.set_title(f"{name}: $x_{{{t}}}$", fontsize=10)
    _draw_schedule(axes[n], axes[n + 1], {"schedule": sched}, t)
    abar_t = sched.abar[t].item()
    fig.suptitle(f"t = {t}: abar_t = {abar_t:.3g}, SNR = {abar_t / max(1 - abar_t, 1e-12):.3g}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_loss_curve(losses, window: int = 25) -> plt.Figure:
    """Training loss per step (faint) and its running mean over ``window`` steps."""
    losses = np.asarray(losses, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(losses, alpha=0.3, lw=0.8, label="per step")
    if len(losses) >= window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window - 1, len(losses)), smooth, lw=2, label=f"mean of {window}")
    ax.set(xlabel="training step", ylabel=r"$\|\epsilon - \epsilon_\theta(x_t, t)\|^2$ (mean)",
           title="Algorithm 1: the loss")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_points_2d(panels: dict[str, torch.Tensor], lim: float = 2.5) -> plt.Figure:
    """Scatter plots of 2-D point clouds, one panel per entry (e.g. data, x_T, samples)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
    for ax, (name, pts) in zip(axes[0], panels.items()):
        pts = pts.detach().cpu().numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.6)
        ax.set(title=name, xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    fig.tight_layout()
    return fig


def plot_monte_carlo(chain: torch.Tensor, mean: float, std: float, t: int) -> plt.Figure:
    """Histogram of one coordinate of x_t from the chain against the closed-form density N(mean, std^2)."""
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(chain.detach().cpu().numpy(), bins=60, density=True, alpha=0.5, label="forward chain")
    grid = np.linspace(mean - 4 * std, mean + 4 * std, 200)
    ax.plot(grid, np.exp(-0.5 * ((grid - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi)),
            "k", lw=2, label="closed form (Property 1)")
    ax.set(xlabel=f"x_t (one entry), t = {t}", ylabel="density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
