"""The plots and the t-scrubbing widget of notebook 03, headless."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from p2p_lab import ddpm  # noqa: E402
from p2p_lab.viz import ddpm as viz  # noqa: E402
from p2p_lab.widgets.ddpm import demo_images, make_noising_ui  # noqa: E402


def _marked_t(ax):
    """The x position of the dashed vertical line (the marked t) in a curve panel."""
    xs = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(xs) == 1
    return xs[0]


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(0)
    return {"a": torch.rand(3, 8, 8, generator=gen) * 2 - 1, "b": torch.rand(3, 12, 12, generator=gen) * 2 - 1}


def test_demo_images_are_a_shapes_scene_and_a_photo_in_range():
    imgs = demo_images(photo_size=48)
    assert list(imgs) == ["shapes world", "photo"]
    assert imgs["shapes world"].shape == (3, 32, 32) and imgs["photo"].shape == (3, 48, 48)
    for x in imgs.values():
        assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1 and x.std() > 0.1


def test_slider_redraws_x_t_and_moves_the_marker(images):
    sched = ddpm.Schedule.linear()
    ui = make_noising_ui(images, sched, t=100, seed=0)
    first = [ax.images[0].get_array().copy() for ax in ui.fig.axes[:2]]
    assert _marked_t(ui.fig.axes[2]) == 100 and _marked_t(ui.fig.axes[3]) == 100

    ui.slider.value = 700
    assert _marked_t(ui.fig.axes[2]) == 700 and _marked_t(ui.fig.axes[3]) == 700
    for ax, (name, x_0), before in zip(ui.fig.axes[:2], images.items(), first):
        shown = np.asarray(ax.images[0].get_array())
        # x_700 computed from the closed form with the widget's fixed noise
        abar = sched.abar[700].item()
        want = ((np.sqrt(abar) * x_0 + np.sqrt(1 - abar) * ui.eps[name]).permute(1, 2, 0).numpy() + 1) / 2
        np.testing.assert_allclose(shown, want.clip(0, 1), atol=1e-5)
        assert np.abs(shown - before).mean() > 0.05  # the picture changed
    assert "700" in ui.fig._suptitle.get_text()


def test_slider_at_zero_shows_the_clean_image(images):
    ui = make_noising_ui(images, ddpm.Schedule.linear(50), t=10)
    ui.slider.value = 0
    np.testing.assert_allclose(ui.fig.axes[0].images[0].get_array(), viz.to_image(images["a"]), atol=1e-6)
    assert ui.slider.max == 50


def test_plot_schedule_draws_each_schedule_and_marks_t():
    fig = viz.plot_schedule({"linear": ddpm.Schedule.linear(), "scaled": ddpm.Schedule.scaled_linear()}, t=300)
    ax_abar, ax_snr = fig.axes
    solid = [line for line in ax_abar.get_lines() if line.get_linestyle() == "-"]
    assert len(solid) == 2 and _marked_t(ax_abar) == 300 and _marked_t(ax_snr) == 300
    np.testing.assert_allclose(solid[0].get_ydata(), ddpm.Schedule.linear().abar[1:].numpy())
    assert ax_snr.get_yscale() == "log"


def test_other_plots_return_figures(images):
    sched = ddpm.Schedule.linear(100)
    eps = {k: torch.randn_like(v) for k, v in images.items()}
    fig = viz.plot_xt_grid(images, [0, 10, 100], sched, eps)
    assert len(fig.axes) == 6
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), viz.to_image(images["a"]), atol=1e-6)
    fig = viz.plot_loss_curve(np.linspace(1, 0, 60), window=10)
    assert len(fig.axes[0].get_lines()) == 2
    fig = viz.plot_points_2d({"data": torch.randn(50, 2), "samples": torch.randn(50, 2)})
    assert len(fig.axes) == 2
    fig = viz.plot_monte_carlo(torch.randn(500), 0.0, 1.0, t=5)
    assert len(fig.axes[0].patches) == 60


def test_plot_image_row_titles_each_image(images):
    fig = viz.plot_image_row({"t = 0": images["a"], "t = 5": images["a"] * 0})
    assert [ax.get_title() for ax in fig.axes] == ["t = 0", "t = 5"]
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), 0.5)
