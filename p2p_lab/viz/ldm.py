"""Figures for notebook 04 (latent diffusion sampling). Each ``plot_*`` returns a matplotlib Figure."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["plot_latent_channels", "plot_reconstruction", "plot_image_grid", "plot_x0_over_steps",
           "plot_guidance_sweep", "plot_step_times"]


def _np_images(images) -> np.ndarray:
    """(b, 3, H, W) tensor in [0, 1] or (b, H, W, 3) array -> (b, H, W, 3) float array."""
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu()
        if images.dim() == 3:
            images = images[None]
        return images.permute(0, 2, 3, 1).numpy()
    arr = np.asarray(images, dtype=np.float32)
    return arr[None] if arr.ndim == 3 else arr


def _figure(rows: int, cols: int, size: float = 1.6):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def plot_latent_channels(latents: torch.Tensor, title: str = "latent channels"):
    """One panel per latent channel of the first item, (C, h, w), in a shared diverging colour scale."""
    z = latents.detach().float().cpu()
    z = z[0] if z.dim() == 4 else z  # (C, h, w)
    lim = float(z.abs().max()) or 1.0
    fig, axes = _figure(1, z.shape[0])
    for c, ax in enumerate(axes[0]):
        im = ax.imshow(z[c].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"channel {c}", fontsize=8)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
    fig.suptitle(f"{title}: {tuple(z.shape)}", fontsize=9)
    return fig


def plot_reconstruction(originals, reconstructions, labels: list[str] | None = None):
    """Rows: original, reconstruction, |difference| (mean over colour channels)."""
    a, b = _np_images(originals), _np_images(reconstructions)
    fig, axes = _figure(3, len(a), size=2.0)
    for i in range(len(a)):
        axes[0, i].imshow(a[i])
        axes[1, i].imshow(np.clip(b[i], 0, 1))
        err = np.abs(a[i] - b[i]).mean(-1)
        axes[2, i].imshow(err, cmap="magma", vmin=0, vmax=0.5)
        axes[2, i].set_xlabel(f"mean |err| {err.mean():.3f}", fontsize=8)
        if labels:
            axes[0, i].set_title(labels[i], fontsize=8)
    for r, name in enumerate(["original", "decode(encode(x))", "|difference|"]):
        axes[r, 0].set_ylabel(name, fontsize=8)
    return fig


def plot_image_grid(images, titles: list[str] | None = None, cols: int | None = None,
                    size: float = 1.6, suptitle: str | None = None):
    """A grid of images ((b, 3, H, W) tensor in [0, 1] or (b, H, W, 3) array)."""
    imgs = _np_images(images)
    cols = cols or len(imgs)
    rows = int(np.ceil(len(imgs) / cols))
    fig, axes = _figure(rows, cols, size)
    for i, ax in enumerate(axes.flat):
        if i >= len(imgs):
            ax.axis("off")
            continue
        ax.imshow(np.clip(imgs[i], 0, 1), interpolation="nearest")
        if titles:
            ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return fig


def plot_x0_over_steps(zt_images, x0_images, timesteps: list[int]):
    """Top row: decode(z_t) after each shown step; bottom row: decode(predicted z_0) at that step.

    ``zt_images``, ``x0_images``: (n, 3, H, W) in [0, 1] (or (n, H, W, 3)), one per entry of
    ``timesteps`` (pick a subset of the steps before decoding).
    """
    top, bottom = _np_images(zt_images), _np_images(x0_images)
    if not len(top) == len(bottom) == len(timesteps):
        raise ValueError(f"need one image per timestep: got {len(top)} z_t images, {len(bottom)} "
                         f"x_0 images and {len(timesteps)} timesteps")
    fig, axes = _figure(2, len(timesteps), size=1.3)
    for j, t in enumerate(timesteps):
        axes[0, j].imshow(np.clip(top[j], 0, 1), interpolation="nearest")
        axes[1, j].imshow(np.clip(bottom[j], 0, 1), interpolation="nearest")
        axes[0, j].set_title(f"t={t}", fontsize=7)
    axes[0, 0].set_ylabel("decode(z_t)", fontsize=8)
    axes[1, 0].set_ylabel("decode(pred z_0)", fontsize=8)
    return fig


def plot_guidance_sweep(images, scales: list[float], prompt: str | None = None):
    """One image per guidance scale w, same seed."""
    return plot_image_grid(images, [f"w = {w:g}" for w in scales], size=1.5,
                           suptitle=f"guidance sweep: {prompt!r}" if prompt else "guidance sweep")


def plot_step_times(rows: list[dict]):
    """Seconds per image against steps, one line per scheduler.

    rows: dicts with keys scheduler, steps, seconds and optionally extrapolated (drawn hollow).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3))
    for name in dict.fromkeys(r["scheduler"] for r in rows):
        pts = sorted((r["steps"], r["seconds"], bool(r.get("extrapolated"))) for r in rows
                     if r["scheduler"] == name)
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", label=name)
        for n, sec, extra in pts:
            ax.plot(n, sec, "o", color=line.get_color(), mfc="white" if extra else line.get_color())
            if extra:
                ax.annotate("extrapolated", (n, sec), textcoords="offset points", xytext=(-70, 4),
                            fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("seconds per image")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
