"""The t-scrubbing widget of notebook 03_ddpm: x_t of two images beside the schedule curves."""
from __future__ import annotations

import dataclasses

import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from .. import ddpm, shapes
from ..viz.ddpm import plot_noising

__all__ = ["demo_images", "NoisingUI", "make_noising_ui"]


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(img.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def demo_images(photo_size: int = 96, seed: int = 3) -> dict[str, torch.Tensor]:
    """A shapes-world scene (32 x 32) and a photograph (scikit-image's ``chelsea``, the cat), in [-1, 1]."""
    from skimage import data, transform

    scene = shapes.sample_scene(np.random.default_rng(seed))
    img, _ = shapes.render(scene)
    cat = data.chelsea()  # (300, 451, 3) uint8
    left = (cat.shape[1] - cat.shape[0]) // 2
    square = cat[:, left:left + cat.shape[0]]  # centre crop, (300, 300, 3)
    photo = transform.resize(square, (photo_size, photo_size), anti_aliasing=True)  # floats in [0, 1]
    return {"shapes world": _to_tensor(img), "photo": _to_tensor((photo * 255).round().astype(np.uint8))}


@dataclasses.dataclass
class NoisingUI:
    """The widget and what it shows: ``slider`` picks t; ``fig`` is the figure drawn last."""

    images: dict[str, torch.Tensor]
    eps: dict[str, torch.Tensor]  # one fixed noise draw per image, so scrubbing t only scales it
    sched: ddpm.Schedule
    slider: w.IntSlider
    out: w.Output
    fig: plt.Figure | None = None

    @property
    def widget(self) -> w.VBox:
        return w.VBox([self.slider, self.out])

    def redraw(self, t: int) -> None:
        with self.out:
            self.out.clear_output(wait=True)
            self.fig = plot_noising(self.images, self.eps, t, self.sched)
            display(self.fig)
            plt.close(self.fig)

    def _ipython_display_(self):
        display(self.widget)


def make_noising_ui(images: dict[str, torch.Tensor] | None = None, sched: ddpm.Schedule | None = None,
                    t: int = 100, seed: int = 0) -> NoisingUI:
    """A slider over t = 0..T showing x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps for each image.

    Defaults: :func:`demo_images` and DDPM's linear schedule with T = 1000.
    """
    images = demo_images() if images is None else images
    sched = ddpm.Schedule.linear() if sched is None else sched
    gen = torch.Generator().manual_seed(seed)
    eps = {name: torch.randn(x.shape, generator=gen) for name, x in images.items()}
    slider = w.IntSlider(value=t, min=0, max=sched.T, step=1, description="t",
                         continuous_update=False, layout=w.Layout(width="60%"))
    ui = NoisingUI(images, eps, sched, slider, w.Output())
    slider.observe(lambda change: ui.redraw(change["new"]), names="value")
    ui.redraw(t)
    return ui
