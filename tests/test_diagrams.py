"""The course's diagrams (p2p_lab.viz.diagrams) draw, return a Figure and name the parts they show."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from p2p_lab.viz import diagrams  # noqa: E402


def _text(fig) -> str:
    """Every string drawn on the figure: titles, box labels, annotations and legend entries."""
    parts = [t.get_text() for ax in fig.axes for t in ax.texts]
    parts += [ax.get_title() for ax in fig.axes]
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            parts += [t.get_text() for t in legend.get_texts()]
    return "\n".join(parts)


@pytest.mark.parametrize("make, labels", [
    (diagrams.plot_ldm_pipeline, ["text encoder (CLIP)", "UNet", "z_T ~ N(0, I)", "decoder", "encoder",
                                  "cross-attn", "scheduler.step"]),
    (diagrams.plot_transformer_block, ["self-attention (attn1)", "cross-attention (attn2)", "feed-forward",
                                       "prompt embeddings"]),
    (diagrams.plot_p2p_branches, ["source", "target", "z*_T = z_T", "tau", "A_t", "A*_t"]),
    (diagrams.plot_inversion_trajectory, ["DDIM inversion", "z*_0", "z*_T", "w = 1", "w = 7.5", "null-text"]),
])
def test_diagram_returns_a_figure_with_its_labels(make, labels):
    fig = make()
    try:
        assert isinstance(fig, Figure)
        text = _text(fig)
        for label in labels:
            assert label in text, f"{make.__name__} does not show {label!r}"
    finally:
        plt.close(fig)


def test_self_attention_comes_before_cross_attention_in_the_block():
    fig = diagrams.plot_transformer_block()
    try:
        ys = {t.get_text().split("\n")[0]: t.get_position()[1] for t in fig.axes[0].texts}
        self_y = next(y for k, y in ys.items() if "self-attention" in k)
        cross_y = next(y for k, y in ys.items() if "cross-attention" in k)
        assert self_y > cross_y  # drawn top to bottom: self-attention first
    finally:
        plt.close(fig)


def test_p2p_branches_pass_maps_only_before_tau():
    fig = diagrams.plot_p2p_branches(n_steps=6, tau_steps=2)
    try:
        assert sum(t.get_text() == "A_t" for t in fig.axes[0].texts) == 2
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="tau_steps"):
        diagrams.plot_p2p_branches(n_steps=3, tau_steps=4)
