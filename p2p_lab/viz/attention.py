"""Plots of attention weights (notebooks 01 and 02): heatmaps with token labels, per-token maps.

Pure functions: each takes tensors and labels and returns a matplotlib ``Figure``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["plot_attention", "plot_attention_heads", "plot_token_maps", "clean_token"]


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


SHORT_TOKENS = {"<|startoftext|>": "<sot>", "<|endoftext|>": "<eot>"}


def clean_token(token: str) -> str:
    """A tokenizer piece as a short label: ``'red</w>'`` -> ``'red'``, ``'<|endoftext|>'`` -> ``'<eot>'``."""
    return SHORT_TOKENS.get(token, token.replace("</w>", ""))


def _heatmap(ax, weights, query_labels, key_labels, title, annotate):
    w = _np(weights)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D (n_query, n_key) weight matrix, got shape {w.shape}; "
                         f"pick one batch element / head first")
    im = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=max(1e-9, float(w.max())), aspect="auto")
    for labels, n, axis in ((query_labels, w.shape[0], "query"), (key_labels, w.shape[1], "key")):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{len(labels)} {axis} labels for {n} {axis} rows/columns")
    ax.set_xticks(range(w.shape[1]), key_labels if key_labels is not None else range(w.shape[1]),
                  rotation=45, ha="right")
    ax.set_yticks(range(w.shape[0]), query_labels if query_labels is not None else range(w.shape[0]))
    ax.set_xlabel("keys (attended to)")
    ax.set_ylabel("queries")
    if annotate and w.size <= 100:
        for i, j in np.ndindex(*w.shape):
            ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if w[i, j] > 0.6 * w.max() else "white")
    if title:
        ax.set_title(title)
    return im


def plot_attention(weights, query_labels=None, key_labels=None, title: str | None = None,
                   annotate: bool = True):
    """Heatmap of one (n_query, n_key) attention matrix: row i is query i's distribution over keys."""
    import matplotlib.pyplot as plt

    w = _np(weights)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * max(3, w.shape[-1]), 0.8 + 0.5 * max(3, w.shape[0])))
    im = _heatmap(ax, w, query_labels, key_labels, title, annotate)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def plot_attention_heads(weights, query_labels=None, key_labels=None, title: str | None = None):
    """One heatmap per head: ``weights`` has shape (heads, n_query, n_key)."""
    import matplotlib.pyplot as plt

    w = _np(weights)
    if w.ndim != 3:
        raise ValueError(f"expected (heads, n_query, n_key), got shape {w.shape}")
    fig, axes = plt.subplots(1, w.shape[0], figsize=(3.2 * w.shape[0] + 0.8, 3.2), squeeze=False,
                             layout="constrained")
    ims = []
    for h, ax in enumerate(axes[0]):
        ims.append(_heatmap(ax, w[h], query_labels if h == 0 else None, key_labels, f"head {h}", annotate=False))
        if h:
            ax.set_yticks(range(w.shape[1]), [""] * w.shape[1])
            ax.set_ylabel("")
    for im in ims:  # one scale for every head, so that the heads can be compared
        im.set_clim(0.0, max(1e-9, float(w.max())))
    fig.colorbar(ims[-1], ax=list(axes[0]), shrink=0.8, label="attention weight")
    if title:
        fig.suptitle(title)
    return fig


def _token_panel(ax, m: np.ndarray, label: str, img=None) -> None:
    """One token's map (h, w): over the image, scaled to its maximum; or alone, with its share."""
    if img is None:
        ax.imshow(m, cmap="inferno", interpolation="nearest")
        ax.set_title(f"{label}\n{m.mean():.2f}", fontsize=9)
        return
    h, w = img.shape[:2]
    ax.imshow(img.mean(-1), cmap="gray", vmin=0, vmax=1, extent=(0, w, h, 0))
    ax.imshow(m / max(m.max(), 1e-12), cmap="inferno", alpha=0.75, vmin=0, vmax=1,
              extent=(0, w, h, 0), interpolation="bilinear")
    ax.set_title(label, fontsize=9)


def plot_token_maps(maps, tokens, image=None, indices=None, skip_padding: bool = True,
                    overlay: bool = False, title: str | None = None, size: float = 1.6):
    """Each token's attention over the image: ``maps`` (n_tokens, height, width), one panel per token.

    The one token-map figure of the course (notebooks 02 and 05, the attention explorer).
    ``tokens``: a label per map (tokenizer pieces or :func:`p2p_lab.viz.p2p.token_labels`);
    ``indices``: which tokens to show (default: every token up to the first end token, or all when
    ``skip_padding`` is False). ``image`` (H x W x 3 in [0, 1]) is drawn first when given.
    ``overlay=False``: each map with its own colour scale and its share of the attention (mean over
    pixels) in its title; ``overlay=True``: each map scaled to its own maximum over the image.
    """
    from matplotlib.figure import Figure

    m = _np(maps)  # (n_tokens, h, w)
    if m.ndim != 3 or m.shape[0] < len(tokens):
        raise ValueError(f"maps must be (n_tokens, height, width) with a map for each of the "
                         f"{len(tokens)} tokens: got {m.shape}")
    labels = [clean_token(t) for t in tokens]
    if indices is None:
        ends = [j for j, t in enumerate(tokens) if t in ("<|endoftext|>", "<end>", "<eot>")]
        indices = list(range(ends[0] + 1 if skip_padding and ends else len(tokens)))
    img = None if image is None else np.clip(_np(image), 0, 1)
    panels = (img is not None) + len(indices)
    fig = Figure(figsize=(size * panels, size + 0.5))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    if img is not None:
        axes[0].imshow(img, interpolation="nearest")
        axes[0].set_title("image", fontsize=9)
    for ax, j in zip(axes[panels - len(indices):], indices):
        _token_panel(ax, m[j], f"{j}: {labels[j]}" if overlay else labels[j], img if overlay else None)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
