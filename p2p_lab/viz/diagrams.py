"""Diagrams of the course's mechanisms (notebooks 04, 05, 06), drawn with matplotlib.

Every ``plot_*`` is pure: it takes no model, draws boxes and arrows and returns a Figure, so the
diagrams render the same in Jupyter, Colab and the built site.
"""
from __future__ import annotations

__all__ = ["plot_ldm_pipeline", "plot_transformer_block", "plot_p2p_branches", "plot_inversion_trajectory"]

# one colour per kind of part, shared by all diagrams
COLORS = {"data": "#f2f2f2", "frozen": "#cfe2f3", "learned": "#fde9c9", "text": "#d9ead3",
          "attention": "#f4cccc", "noise": "#e6e0f0"}


def _canvas(width: float, height: float):
    """A blank Axes with data coordinates in inches (0..width, 0..height)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def _box(ax, x, y, w, h, text, kind="data", fontsize=9, bold=False):
    """A rounded box centred at (x, y) with a label; returns its (left, right, bottom, top)."""
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=COLORS[kind], ec="#444444", lw=1.0))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, weight="bold" if bold else "normal")
    return x - w / 2, x + w / 2, y - h / 2, y + h / 2


def _arrow(ax, start, end, text=None, style="-|>", color="#333333", ls="-", fontsize=8, offset=(0, 0.12),
           rad=0.0):
    """An arrow from start to end, with an optional label near its middle."""
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle=style, color=color, lw=1.3, ls=ls, shrinkA=0, shrinkB=0,
                                connectionstyle=f"arc3,rad={rad}"))
    if text:
        mx, my = (start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1]
        ax.text(mx, my, text, ha="center", va="bottom", fontsize=fontsize, color=color)


def _legend(ax, kinds, x, y):
    """A row of small coloured squares naming what each box colour means."""
    from matplotlib.patches import Rectangle

    for name, kind in kinds:
        ax.add_patch(Rectangle((x, y - 0.08), 0.16, 0.16, fc=COLORS[kind], ec="#444444", lw=0.8))
        ax.text(x + 0.22, y, name, va="center", fontsize=8)
        x += 0.35 + 0.075 * len(name)


def plot_ldm_pipeline():
    """Latent diffusion (notebook 04): prompt -> text encoder -> cross-attention in the UNet; z_T -> z_0 -> D."""
    fig, ax = _canvas(10.5, 4.6)
    # text path (top)
    _box(ax, 1.0, 3.7, 1.5, 0.6, 'prompt y\n"a red circle ..."', "data", 8)
    _box(ax, 3.2, 3.7, 2.0, 0.6, "tokenizer\nstart, words, end, pad", "frozen", 8)
    _box(ax, 5.4, 3.7, 1.9, 0.6, "text encoder (CLIP)\nembeddings c: L x D", "text", 8)
    _arrow(ax, (1.75, 3.7), (2.2, 3.7))
    _arrow(ax, (4.2, 3.7), (4.45, 3.7))
    # latent diffusion path (middle)
    _box(ax, 1.0, 2.0, 1.5, 0.7, "z_T ~ N(0, I)\n(seed)", "noise", 8)
    _box(ax, 5.4, 2.0, 3.0, 1.1, "UNet  eps_theta(z_t, t, c)\nresnet blocks + transformer blocks\n"
                                 "(self-attn, cross-attn to c)", "learned", 8)
    _box(ax, 8.9, 2.0, 1.4, 0.7, "z_0\n(latent, 4 ch)", "noise", 8)
    _arrow(ax, (1.75, 2.0), (3.9, 2.0), "z_t")
    _arrow(ax, (6.9, 2.0), (8.2, 2.0), "last step")
    # the sampling loop
    _arrow(ax, (6.4, 1.45), (4.4, 1.45), "scheduler.step: z_t -> z_t'  (repeat for every t)", rad=-0.35,
           offset=(0, -0.72))
    _arrow(ax, (5.4, 3.4), (5.4, 2.55), "keys, values", offset=(0.55, -0.05))
    # pixels (bottom): encoder for training / inversion, decoder for sampling
    _box(ax, 8.9, 3.7, 1.4, 0.6, "image x\n(pixels)", "data", 8)
    _box(ax, 10.0, 2.85, 0.8, 0.5, "decoder\nD", "frozen", 8)
    _box(ax, 7.8, 2.85, 0.8, 0.5, "encoder\nE", "frozen", 8)
    _arrow(ax, (9.45, 2.35), (9.9, 2.6))
    _arrow(ax, (10.0, 3.1), (9.6, 3.45))
    _arrow(ax, (8.3, 3.45), (7.9, 3.1), ls="--")
    _arrow(ax, (7.9, 2.6), (8.3, 2.35), ls="--")
    ax.text(7.1, 3.25, "training,\ninversion", fontsize=7, ha="center", color="#555555")
    ax.set_title("Latent diffusion: the prompt steers the UNet through cross-attention; "
                 "diffusion runs on latents", fontsize=10)
    _legend(ax, [("data", "data"), ("frozen", "frozen"), ("learned (UNet)", "learned"),
                 ("text encoder", "text"), ("latents", "noise")], 0.3, 0.25)
    return fig


def plot_transformer_block():
    """One UNet transformer block (notebooks 02, 04): self-attention, then cross-attention, then MLP."""
    fig, ax = _canvas(7.8, 6.4)
    x = 3.3
    rows = [(5.6, "latent pixels  (h*w tokens, C channels)", "data"),
            (4.5, "LayerNorm -> self-attention (attn1)\nQ, K, V from the pixels: (h*w) x (h*w) map", "attention"),
            (3.2, "LayerNorm -> cross-attention (attn2)\nQ from pixels, K, V from the prompt: (h*w) x L map",
             "attention"),
            (1.9, "LayerNorm -> feed-forward (MLP)", "learned"),
            (0.8, "to the next UNet layer", "data")]
    for y, text, kind in rows:
        _box(ax, x, y, 4.4, 0.75 if "\n" in text else 0.5, text, kind, 8)
    for (y0, *_), (y1, text1, _) in zip(rows, rows[1:]):
        top = y1 + (0.375 if "\n" in text1 else 0.25)
        _arrow(ax, (x, y0 - 0.3), (x, top + 0.02))
    for y in (4.5, 3.2, 1.9):  # residual connections: each sub-layer's output is added to its input
        ax.plot([x - 2.2, x - 2.55, x - 2.55, x - 2.2], [y + 0.55, y + 0.55, y - 0.5, y - 0.5], color="#888888", lw=1)
        ax.text(x - 2.7, y, "+ input", fontsize=7, color="#888888", ha="right", va="center", rotation=90)
    _box(ax, 6.85, 3.2, 1.6, 0.75, "prompt embeddings\nc: L x D\n(text encoder)", "text", 8)
    _arrow(ax, (6.05, 3.2), (5.52, 3.2))
    ax.text(6.85, 2.3, "Prompt-to-Prompt\nedits this map", fontsize=8, ha="center", color="#a61c00")
    ax.text(6.85, 4.5, "P2P can also\ninject this map", fontsize=8, ha="center", color="#a61c00")
    ax.set_title("A transformer block of the UNet: self-attention, then cross-attention", fontsize=10)
    return fig


def plot_p2p_branches(n_steps: int = 5, tau_steps: int = 3):
    """Prompt-to-Prompt (notebook 05): source and target from one z_T; maps passed down for the first steps."""
    if not 0 <= tau_steps <= n_steps:
        raise ValueError(f"tau_steps must lie in 0..n_steps={n_steps}, got {tau_steps}")
    fig, ax = _canvas(1.6 * n_steps + 3.2, 4.4)
    y_src, y_tgt = 3.2, 1.1
    _box(ax, 0.8, 2.15, 1.2, 0.7, "z_T\n(one seed)", "noise", 8)
    ax.text(0.8, y_src + 0.55, "source  y", fontsize=9, ha="center", weight="bold")
    ax.text(0.8, y_tgt - 0.65, "target  y*", fontsize=9, ha="center", weight="bold")
    _arrow(ax, (1.2, 2.5), (1.9, y_src))
    _arrow(ax, (1.2, 1.8), (1.9, y_tgt), "z*_T = z_T", offset=(-0.55, -0.25))
    for i in range(n_steps):
        x = 2.6 + 1.6 * i
        kept = i < tau_steps
        _box(ax, x, y_src, 1.2, 0.7, f"UNet step {i + 1}\nmaps A_t", "learned", 8)
        _box(ax, x, y_tgt, 1.2, 0.7, f"UNet step {i + 1}\nmaps A*_t", "learned", 8)
        if kept:
            _arrow(ax, (x, y_src - 0.38), (x, y_tgt + 0.38), "A_t", color="#a61c00", offset=(0.25, -0.1))
        if i + 1 < n_steps:
            _arrow(ax, (x + 0.62, y_src), (x + 0.98, y_src))
            _arrow(ax, (x + 0.62, y_tgt), (x + 0.98, y_tgt))
    x_end = 2.6 + 1.6 * (n_steps - 1)
    _box(ax, x_end + 1.55, y_src, 1.2, 0.7, "source\nimage", "data", 8)
    _box(ax, x_end + 1.55, y_tgt, 1.2, 0.7, "edited\nimage", "data", 8)
    _arrow(ax, (x_end + 0.62, y_src), (x_end + 0.93, y_src))
    _arrow(ax, (x_end + 0.62, y_tgt), (x_end + 0.93, y_tgt))
    if 0 < tau_steps < n_steps:
        xs = 2.6 + 1.6 * (tau_steps - 0.5)
        ax.plot([xs, xs], [0.3, 3.95], ls=":", color="#a61c00")
        ax.text(xs, 4.05, "tau", ha="center", fontsize=9, color="#a61c00")
    ax.text(2.6 + 1.6 * (tau_steps - 1) / 2 if tau_steps else 2.6, 0.25,
            "t >= tau: target attends with the source's maps", fontsize=8, ha="center", color="#a61c00")
    if tau_steps < n_steps:
        ax.text(2.6 + 1.6 * (tau_steps + n_steps - 1) / 2, 0.25, "t < tau: its own maps A*_t", fontsize=8,
                ha="center", color="#555555")
    ax.set_title("Prompt-to-Prompt: two branches from the same z_T; the source's maps replace the target's early",
                 fontsize=10)
    return fig


def plot_inversion_trajectory(w: float = 7.5):
    """Inversion (notebook 06): DDIM inversion climbs z*_0 -> z*_T; sampling back at w = 1 retraces it, guided drifts."""
    import numpy as np

    fig, ax = _canvas(8.0, 4.6)
    ax.set_aspect("auto")
    t = np.linspace(0, 1, 11)
    pivot = 0.8 + 5.8 * t, 1.0 + 2.6 * t + 0.5 * np.sin(3.2 * t)  # the inversion trajectory z*_0 .. z*_T
    ax.plot(*pivot, "o-", color="#1155cc", lw=2, ms=5, label="DDIM inversion (w = 1): z*_0 -> z*_T")
    back = t[::-1]
    drift = 0.9 * (1 - back) ** 1.5
    ax.plot(0.8 + 5.8 * back, 1.0 + 2.6 * back + 0.5 * np.sin(3.2 * back) - 0.05 * (1 - back), "--",
            color="#6aa84f", lw=1.5, label="sampled back at w = 1: retraces it closely")
    ax.plot(0.8 + 5.8 * back, 1.0 + 2.6 * back + 0.5 * np.sin(3.2 * back) - drift, "s--", color="#cc0000",
            lw=1.5, ms=4, label=f"sampled back at w = {w:g}: drifts away")
    for i in range(2, 10, 3):  # null-text: each guided step pulled back onto the trajectory
        ax.annotate("", xy=(pivot[0][i], pivot[1][i]), xytext=(pivot[0][i] + 0.05, pivot[1][i] - 0.45),
                    arrowprops=dict(arrowstyle="-|>", color="#e69138", lw=1.3))
    ax.plot([], [], color="#e69138", lw=1.3, label="null-text / DirectInversion: pull each step back on it")
    ax.text(pivot[0][0] + 0.3, pivot[1][0] - 0.3, "z*_0 = E(image)", ha="left", fontsize=9)
    ax.text(pivot[0][-1], pivot[1][-1] + 0.2, "z*_T (the image's noise)", ha="center", fontsize=9)
    ax.text(0.2, -0.05, "clean latent  (t = 0)", fontsize=8, color="#555555")
    ax.text(7.9, -0.05, "noise  (t = T)", fontsize=8, color="#555555", ha="right")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_xlim(0, 8.0)
    ax.set_ylim(-0.3, 5.2)
    ax.set_title("Inversion: find the z_T an image would come from, then sample (and edit) from it", fontsize=10)
    return fig
