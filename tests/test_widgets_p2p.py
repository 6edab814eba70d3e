"""Notebook 05's plots and widgets: pure plots draw what they are given; widget changes redraw.

The widgets run the shipped model for 2 steps only (the pictures do not matter here, what is
drawn for which setting does).
"""
import numpy as np
import pytest
import torch

from p2p_lab.viz import p2p as viz

SRC, TGT = "a red circle on a blue background", "a red square on a blue background"
STEPS = 2


def _image_data(fig, ax_index):
    return np.asarray(fig.axes[ax_index].images[-1].get_array())


# ---------------------------------------------------------------- pure plots

def test_token_labels_follow_the_tokenizer(shipped_pipe):
    labels = viz.token_labels(shipped_pipe.tokenizer, "a turquoise circle")
    assert labels == ["<sot>", "a", "turquois", "e", "circle", "<eot>"]
    assert viz.token_labels(shipped_pipe.tokenizer, "a red circle", n=6)[-1] == "<pad>"


def test_plot_mapper_draws_the_labelled_corner_of_M():
    M = torch.zeros(16, 16)
    M[2, 2], M[2, 3] = 1.0, 0.5
    fig = viz.plot_mapper(M, ["<sot>", "a", "circle"], ["<sot>", "a", "big", "triangle"])
    shown = _image_data(fig, 0)
    assert shown.shape == (3, 4) and shown[2, 2] == 1.0 and shown[2, 3] == 0.5
    assert {t.get_text() for t in fig.axes[0].texts} == {"1", "0.5"}


def test_plot_alpha_rows_are_steps_and_columns_tokens():
    alpha = torch.zeros(10, 16)
    alpha[:4] = 1
    fig = viz.plot_alpha(alpha, ["<sot>", "a", "red"], timesteps=list(range(901, 0, -100)))
    shown = _image_data(fig, 0)
    assert shown.shape == (10, 3) and shown[:4].min() == 1 and shown[4:].max() == 0


def test_plot_token_maps_draws_each_chosen_token_over_the_image():
    maps = torch.zeros(8, 8, 16)
    maps[2, 3, 4] = 2.0
    fig = viz.plot_token_maps(maps.permute(2, 0, 1), ["<sot>", "a", "b", "c", "circle"], np.zeros((32, 32, 3)),
                              [4], overlay=True)
    shown = _image_data(fig, 1)
    assert shown.shape == (8, 8) and shown[2, 3] == 1.0 and shown.sum() == 1.0  # scaled to its max
    assert fig.axes[1].get_title() == "4: circle"


def test_plots_reject_wrong_shapes_with_a_fix():
    with pytest.raises(ValueError, match="one title per image"):
        viz.plot_images([np.zeros((4, 4, 3))], ["a", "b"])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        viz.plot_images([np.zeros((2, 4, 4, 3))])
    with pytest.raises(ValueError, match="num_steps, n_tokens"):
        viz.plot_alpha(torch.zeros(3), ["a"])


def test_figure_to_html_carries_the_title():
    html = viz.figure_to_html(viz.plot_images([np.zeros((4, 4, 3))], suptitle="cross tau=0.30"))
    assert 'alt="cross tau=0.30"' in html and "data:image/png;base64," in html


# ---------------------------------------------------------------- the edit UI

@pytest.fixture(scope="module")
def ui(shipped_pipe):
    from p2p_lab.widgets.p2p import make_edit_ui

    return make_edit_ui(shipped_pipe, SRC, TGT, num_inference_steps=STEPS, cross_tau=0.8)


def test_edit_ui_draws_source_fixed_seed_and_edit(ui, shipped_pipe):
    from p2p_lab.p2p import fixed_seed

    assert "cross tau=0.80" in ui.figure.get_suptitle()
    titles = [ax.get_title() for ax in ui.figure.axes]
    assert titles[:3] == ["source", "fixed seed", "Prompt-to-Prompt"]
    assert "source: 'circle'" in titles and "edit: 'square'" in titles
    baseline = fixed_seed(shipped_pipe, SRC, TGT, num_inference_steps=STEPS)
    np.testing.assert_allclose(_image_data(ui.figure, 1), baseline[1], atol=1e-5)
    np.testing.assert_allclose(_image_data(ui.figure, 0), baseline[0], atol=1e-5)


def test_moving_tau_redraws_the_edit_from_the_cached_source(ui, shipped_pipe):
    from p2p_lab.p2p import edit

    before_html, before_edit = ui.view.value, _image_data(ui.figure, 2).copy()
    ui.cross_tau.value = 0.3
    assert ui.result.from_cache
    assert "cross tau=0.30" in ui.figure.get_suptitle() and 'alt="P2P edit: cross tau=0.30' in ui.view.value
    assert ui.view.value != before_html and "cross tau=0.30" in ui.status.value
    # What is drawn is what an independent, uncached call computes for the new setting (a cached source
    # runs the target rows in a smaller batch: equal up to float rounding).
    direct = edit(shipped_pipe, SRC, TGT, cross_tau=0.3, self_tau=0.4, num_inference_steps=STEPS)
    np.testing.assert_allclose(_image_data(ui.figure, 2), direct.images[1], atol=1e-4)
    assert not np.allclose(before_edit, direct.images[1])


def test_per_word_tau_and_reweight_controls_reach_the_edit(ui):
    ui.word_own["square"].value = True
    assert not ui.word_tau["square"].disabled
    ui.word_tau["square"].value = 0.0
    assert ui.settings().cross_tau == {"default_": 0.3, "square": 0.0}
    assert "tau['square']=0.00" in ui.figure.get_suptitle()
    ui.reweight_word.value = "square"
    ui.reweight_scale.value = 2.5
    assert ui.settings().reweight == {"square": 2.5}
    assert "reweight 'square' x2.5" in ui.figure.get_suptitle()
    assert "edit: 'square' (reweighted)" in [ax.get_title() for ax in ui.figure.axes]


def test_context_tau_slider_reaches_the_edit(ui, shipped_pipe):
    from p2p_lab.p2p import edit

    assert ui.settings().context_tau == 0.0  # the paper's method until the student moves the slider
    before = _image_data(ui.figure, 2).copy()
    ui.context_tau.value = 1.0  # every unchanged token keeps the source's embedding
    assert "context tau=1.00" in ui.figure.get_suptitle()
    direct = edit(shipped_pipe, SRC, TGT, options=ui.settings())
    np.testing.assert_allclose(_image_data(ui.figure, 2), direct.images[1], atol=1e-4)
    assert not np.allclose(before, direct.images[1])


def test_a_bad_setting_shows_an_error_instead_of_raising(shipped_pipe):
    from p2p_lab.widgets.p2p import make_edit_ui

    bad = make_edit_ui(shipped_pipe, SRC, "a big red square on a green background", mode="replace",
                       num_inference_steps=STEPS)
    assert bad.figure is None and "ValueError" in bad.status.value and "refine" in bad.status.value


# ---------------------------------------------------------------- the attention explorer

def test_attention_explorer_follows_token_step_and_layer(shipped_pipe):
    from p2p_lab.widgets.p2p import make_attention_explorer

    ex = make_attention_explorer(shipped_pipe, "a turquoise circle on a red background",
                                 num_inference_steps=STEPS)
    ex.token.value = 4
    np.testing.assert_allclose(_image_data(ex.figure, 1), _scaled(ex.store.maps(0, None, STEPS - 1)[..., 4]),
                               atol=1e-6)
    assert "'circle' (token 4)" in ex.figure.get_suptitle()
    ex.step.value = 0
    np.testing.assert_allclose(_image_data(ex.figure, 1), _scaled(ex.store.maps(0, None, 0)[..., 4]), atol=1e-6)
    assert "step 0/" in ex.figure.get_suptitle()
    # One layer: its own recorded probabilities, averaged over heads, on its own grid.
    name = ex.layer.options[-1]
    ex.layer.value = name
    assert name in ex.figure.get_suptitle()
    res = int(name.rsplit("x", 1)[-1].rstrip(")"))
    assert _image_data(ex.figure, 1).shape == (res, res)


def _scaled(m):
    m = m.numpy()
    return m / m.max()


# ---------------------------------------------------------------- Algorithm 1 with a student's switch

def test_run_edit_switch_with_the_reference_equals_the_engine(shipped_pipe):
    from p2p_lab.checks.p2p import edit_switch, run_edit_switch
    from p2p_lab.p2p import edit, tau_to_timestep

    steps = 4
    tau = tau_to_timestep(shipped_pipe, 0.5, steps)
    mine = run_edit_switch(shipped_pipe, SRC, TGT, edit_switch, tau, num_inference_steps=steps)
    engine = edit(shipped_pipe, SRC, TGT, cross_tau=0.5, self_tau=0.0, context_tau=0.0,
                  num_inference_steps=steps)  # Algorithm 1 as in the paper
    np.testing.assert_allclose(mine, engine.images, atol=1e-4)
    with pytest.raises(ValueError, match="same token count"):
        run_edit_switch(shipped_pipe, SRC, "a turquoise circle on a blue background", edit_switch, tau)
