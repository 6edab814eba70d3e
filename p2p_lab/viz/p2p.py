"""Pure plotting for notebook 05 (Prompt-to-Prompt): every function returns a matplotlib Figure.

Nothing here runs a model: the notebook and :mod:`p2p_lab.widgets.p2p` compute images, attention
maps, mapper matrices and alpha schedules with :mod:`p2p_lab.p2p` and hand them to these
functions. Figures are built with ``matplotlib.figure.Figure`` (no pyplot state), so a widget can
redraw many times without leaking figures; Jupyter shows a returned Figure like any other.
"""
from __future__ import annotations

import base64
import io
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

__all__ = ["token_labels", "plot_images", "plot_token_maps", "plot_mapper", "plot_prompt_mapper",
           "plot_alpha", "plot_tau_sweep", "plot_edit_view", "plot_curve", "plot_panels", "figure_to_png",
           "figure_to_html"]

from .attention import clean_token, plot_token_maps  # noqa: F401  (the one token-map figure)


def token_labels(tokenizer, prompt: str, n: int | None = None) -> list[str]:
    """Readable labels of a prompt's tokens, start token and first end token included.

    ``n``: how many positions to label (default: up to and including the first end token);
    later positions are padding and get '<pad>'.
    """
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True).input_ids
    toks = [clean_token(t) for t in tokenizer.convert_ids_to_tokens(ids)]
    first_end = toks.index("<eot>") if "<eot>" in toks else len(toks) - 1
    toks = toks[: first_end + 1] + ["<pad>"] * (len(toks) - first_end - 1)
    return toks[: (first_end + 1 if n is None else n)]


def _image(x) -> np.ndarray:
    """An (H, W, 3) float image in [0, 1] from a numpy array, torch tensor or PIL image."""
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {a.shape}; pass one image, "
                         f"e.g. result.images[0]")
    return np.clip(a, 0.0, 1.0)


def _map(x) -> np.ndarray:
    a = np.asarray(x.detach().cpu().float() if hasattr(x, "detach") else x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected one (res, res) attention map, got shape {a.shape}")
    return a


def _axes_row(n: int, size: float, rows: int = 1) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(size * n, size * rows + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, n, squeeze=False))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def plot_images(images: Sequence, titles: Sequence[str] | None = None, suptitle: str | None = None,
                size: float = 2.0) -> Figure:
    """A row of images with one title each."""
    images = list(images)
    titles = list(titles) if titles is not None else [""] * len(images)
    if len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles; give one title per image")
    fig, axes = _axes_row(len(images), size)
    for ax, img, title in zip(axes[0], images, titles):
        ax.imshow(_image(img), interpolation="nearest")
        ax.set_title(title, fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def plot_mapper(M, source_labels: Sequence[str], target_labels: Sequence[str],
                title: str | None = None) -> Figure:
    """Heatmap of the mapper M (rows: source tokens i, columns: target tokens j), values written in.

    Only the labelled corner is drawn (the padding block of M is the identity or a shift).
    """
    M = np.asarray(M.detach().cpu().float() if hasattr(M, "detach") else M)
    rows, cols = len(source_labels), len(target_labels)
    if M.ndim != 2 or M.shape[0] < rows or M.shape[1] < cols:
        raise ValueError(f"M has shape {M.shape}, too small for {rows} source and {cols} "
                         f"target labels")
    sub = M[:rows, :cols]
    fig = Figure(figsize=(0.45 * cols + 1.8, 0.4 * rows + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.imshow(sub, cmap="Blues", vmin=0, vmax=max(1.0, float(sub.max())))
    for i in range(rows):
        for j in range(cols):
            if sub[i, j] != 0:
                ax.text(j, i, f"{sub[i, j]:.2g}", ha="center", va="center", fontsize=7,
                        color="white" if sub[i, j] > 0.6 else "black")
    ax.set_xticks(range(cols), [f"{j}:{t}" for j, t in enumerate(target_labels)], rotation=60,
                  fontsize=8, ha="right")
    ax.set_yticks(range(rows), [f"{i}:{t}" for i, t in enumerate(source_labels)], fontsize=8)
    ax.set_xlabel("target token j (A_hat column)")
    ax.set_ylabel("source token i (A column)")
    ax.set_title(title or "mapper M,  A_hat = A M", fontsize=10)
    return fig


def plot_alpha(alpha, labels: Sequence[str], timesteps: Sequence[int] | None = None,
               title: str | None = None) -> Figure:
    """The alpha matrix over (step, token): 1 (dark) = the source's map, 0 = the target's own.

    ``alpha``: (num_steps, n_tokens); rows are sampling steps from the first (t = T) down;
    ``timesteps`` labels the rows with the scheduler's t.
    """
    a = np.asarray(alpha.detach().cpu().float() if hasattr(alpha, "detach") else alpha)
    if a.ndim != 2:
        raise ValueError(f"alpha must be (num_steps, n_tokens), got shape {a.shape}")
    a = a[:, : len(labels)]
    steps = a.shape[0]
    fig = Figure(figsize=(0.45 * len(labels) + 2.0, 0.16 * steps + 1.6), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(a, cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=8, ha="right")
    ticks = list(range(0, steps, max(1, steps // 8)))
    names = [f"{k} (t={int(timesteps[k])})" for k in ticks] if timesteps is not None else ticks
    ax.set_yticks(ticks, names, fontsize=7)
    ax.set_ylabel("sampling step (top: the first)")
    fig.colorbar(im, ax=ax, shrink=0.8, label="alpha (1: source map)")
    ax.set_title(title or "alpha_t per token", fontsize=10)
    return fig


def plot_prompt_mapper(tokenizer, source: str, target: str, variant: str = "copy") -> Figure:
    """:func:`plot_mapper` of the word-swap mapper M between two prompts (notebook 05), labelled
    with each prompt's tokens."""
    from ..p2p.align import replace_mapper

    M = replace_mapper(tokenizer, source, target, variant)
    return plot_mapper(M, token_labels(tokenizer, source), token_labels(tokenizer, target),
                       title=f"M ({variant}): {source!r} -> {target!r}")


def plot_tau_sweep(images: Sequence, taus: Sequence[float], source=None,
                   title: str | None = None, notes: Sequence[str] | None = None,
                   label: str = "cross tau") -> Figure:
    """Edits for several tau values in a row, the source first if given."""
    imgs = ([source] if source is not None else []) + list(images)
    notes = list(notes) if notes is not None else [""] * len(taus)
    titles = (["source"] if source is not None else []) + [
        f"{label}={tau:.2f}" + (f"\n{n}" if n else "") for tau, n in zip(taus, notes)]
    return plot_images(imgs, titles, title, size=1.7)


def plot_edit_view(images: Mapping[str, object], maps: Mapping[str, object] | None = None,
                   title: str | None = None, size: float = 2.0) -> Figure:
    """The widgets' view: a row of images (e.g. source | fixed seed | P2P edit) and, below it,
    attention maps (label -> (res, res) map), each drawn over the image it belongs to when the
    label starts with the image's name."""
    maps = dict(maps or {})
    n = max(len(images), len(maps), 1)
    fig, axes = _axes_row(n, size, rows=2 if maps else 1)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, img) in zip(axes[0], images.items()):
        ax.axis("on")
        ax.imshow(_image(img), interpolation="nearest")
        ax.set_title(name, fontsize=9)
    for ax, (name, m) in zip(axes[1] if maps else [], maps.items()):
        ax.axis("on")
        m = _map(m)
        ax.imshow(m / max(m.max(), 1e-12), cmap="inferno", vmin=0, vmax=1, interpolation="bilinear")
        ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_curve(x: Sequence[float], ys: Mapping[str, Sequence[float]], xlabel: str, ylabel: str,
               title: str | None = None) -> Figure:
    """One line per named series, e.g. an edit metric against tau."""
    fig = Figure(figsize=(4.6, 3.0), layout="constrained")
    ax = fig.subplots()
    for name, y in ys.items():
        ax.plot(list(x), list(y), marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(ys) > 1:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_panels(x: Sequence[float], ys: Mapping[str, Sequence[float]], xlabel: str,
                ylabels: Mapping[str, str], title: str | None = None) -> Figure:
    """One small panel per named series, each with its own y axis and unit (e.g. a re-weighted
    word's effect against the scale c)."""
    fig = Figure(figsize=(2.6 * len(ys), 2.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(ys)))
    for ax, (name, y) in zip(axes, ys.items()):
        ax.plot(list(x), list(y), marker="o")
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabels.get(name, ""), fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def figure_to_png(fig: Figure, dpi: int = 80) -> bytes:
    """PNG bytes of a figure (used by the widgets, which draw into an HTML image)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def figure_to_html(fig: Figure, dpi: int = 80) -> str:
    """An ``<img>`` of the figure whose alt text and caption are the figure's title."""
    import html

    title = html.escape(fig.get_suptitle())
    data = base64.b64encode(figure_to_png(fig, dpi)).decode("ascii")
    return (f'<figure class="p2p-figure" style="margin:0"><img alt="{title}" title="{title}" '
            f'src="data:image/png;base64,{data}"/><figcaption class="p2p-title">{title}'
            f'</figcaption></figure>')
