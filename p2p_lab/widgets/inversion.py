"""The widget of notebook 06: pick or upload an image, type the two prompts, scrub tau.

``make_real_edit_ui`` shows the image | its reconstruction from the inversion | the Prompt-to-Prompt
edit | the target sampled from the inverted noise without attention control (the fixed-seed
baseline of a real image). A new image, prompt or method inverts again; a new tau re-runs only the
targets (the inversion and the source branch are kept). Drawing is :mod:`p2p_lab.viz.p2p`'s.
"""
from __future__ import annotations

import io
import time

import numpy as np

from ..viz import p2p as viz

__all__ = ["RealEditUI", "make_real_edit_ui", "uploaded_image"]

UPLOAD = "(your upload)"


def uploaded_image(value) -> np.ndarray | None:
    """The first file of a ``FileUpload`` widget's value as an RGB array, or None when empty.

    ipywidgets 7 keeps ``{name: {"content": bytes, ...}}``, ipywidgets 8 a tuple of dicts with a
    ``"content"`` memoryview; both are read.
    """
    from PIL import Image

    if not value:
        return None
    first = next(iter(value.values())) if isinstance(value, dict) else value[0]
    content = first["content"] if isinstance(first, dict) else first.content
    return np.asarray(Image.open(io.BytesIO(bytes(content))).convert("RGB"))


class RealEditUI:
    """Controls + view of one real-image edit (see :func:`make_real_edit_ui`)."""

    def __init__(self, pipe, images: dict, target: str, *, method: str = "null-text",
                 num_inference_steps: int | None = None, cross_tau: float = 0.8, self_tau: float = 0.4,
                 dpi: int = 70):
        import ipywidgets as W

        self.pipe, self.images, self.dpi = pipe, dict(images), dpi  # {name: (image, caption)}
        self.steps = num_inference_steps
        first = next(iter(self.images))
        self.picture = W.Dropdown(options=[*self.images, UPLOAD], value=first, description="image")
        self.upload = W.FileUpload(accept="image/*", multiple=False, description="upload")
        self.source = W.Text(value=self.images[first][1], description="source", layout=W.Layout(width="420px"))
        self.target = W.Text(value=target, description="target", layout=W.Layout(width="420px"))
        from ..p2p.inversion import METHODS

        self.method = W.Dropdown(options=list(METHODS), value=method, description="inversion")
        kw = dict(min=0.0, max=1.0, step=0.05, continuous_update=False, readout_format=".2f")
        self.cross_tau = W.FloatSlider(value=cross_tau, description="cross tau", **kw)
        self.self_tau = W.FloatSlider(value=self_tau, description="self tau", **kw)
        self.view, self.status = W.HTML(), W.HTML()
        self.inversion, self.result, self.figure, self.renders = None, None, None, 0
        for w in (self.picture, self.source, self.method):
            w.observe(self._new_inversion, names="value")
        self.upload.observe(self._uploaded, names="value")
        for w in (self.target, self.cross_tau, self.self_tau):
            w.observe(lambda change: self.render(), names="value")
        self.widget = W.VBox([W.HBox([self.picture, self.upload, self.method]), self.source, self.target,
                              W.HBox([self.cross_tau, self.self_tau]), self.status, self.view])

    def image(self) -> np.ndarray | None:
        if self.picture.value == UPLOAD:
            return uploaded_image(self.upload.value)
        return self.images[self.picture.value][0]

    def _uploaded(self, change) -> None:
        if self.picture.value == UPLOAD:
            self._new_inversion(change)
        else:
            self.picture.value = UPLOAD  # observed: inverts

    def _new_inversion(self, change) -> None:
        self.inversion = None
        if change["owner"] is self.picture and change["new"] in self.images:
            caption = self.images[change["new"]][1]
            if caption != self.source.value:
                self.source.value = caption  # its observer renders (one inversion)
                return
        self.render()

    def invert(self):
        from ..p2p import invert

        if self.inversion is None:
            image = self.image()
            if image is None:
                raise ValueError("upload an image first (the upload button), or pick one of the images")
            self.inversion = invert(self.pipe, image, self.source.value, self.method.value,
                                    num_inference_steps=self.steps)
        return self.inversion

    def compute(self):
        from ..p2p import edit

        inv = self.invert()
        cache = None if self.result is None or self.result.prompts[0] != inv.prompt else self.result.cache
        try:
            self.result = edit(self.pipe, inv.prompt, self.target.value, inversion=inv, cache=cache,
                               cross_tau=self.cross_tau.value, self_tau=self.self_tau.value)
        except ValueError:  # another inversion than the cached source's: start afresh
            self.result = edit(self.pipe, inv.prompt, self.target.value, inversion=inv,
                               cross_tau=self.cross_tau.value, self_tau=self.self_tau.value)
        baseline = edit(self.pipe, inv.prompt, self.target.value, inversion=inv, cross_tau=0.0,
                        self_tau=0.0, context_tau=0.0, cache=self.result.cache)
        return inv, self.result, baseline.images[1]

    def render(self):
        """Invert (if needed), edit and redraw; errors are shown in the status line, not raised."""
        start = time.perf_counter()
        try:
            inv, result, baseline = self.compute()
        except (ValueError, TypeError, OSError) as err:
            self.status.value = f'<span style="color:#b00">{type(err).__name__}: {err}</span>'
            return self.figure
        title = (f"{inv.method} inversion of {inv.prompt!r} -> {self.target.value!r}, cross tau "
                 f"{self.cross_tau.value:.2f}, self tau {self.self_tau.value:.2f}")
        self.figure = viz.plot_images([inv.image, result.images[0], result.images[1], baseline],
                                      ["image", "reconstruction", "Prompt-to-Prompt", "no control (same z_T)"],
                                      suptitle=title)
        self.view.value = viz.figure_to_html(self.figure, self.dpi)
        self.renders += 1
        self.status.value = f'<span class="p2p-status">{time.perf_counter() - start:.2f} s</span>'
        return self.figure

    def _ipython_display_(self):
        from IPython.display import display

        if self.figure is None:
            self.render()
        display(self.widget)


def make_real_edit_ui(pipe, images: dict, target: str, **kwargs) -> RealEditUI:
    """Pick one of ``images`` ({name: (image, its caption)}) or upload your own, type the source
    prompt (the image's caption) and the target, choose the inversion and scrub tau (notebook 06).
    Keyword options: method, num_inference_steps, cross_tau, self_tau. Display the returned object."""
    ui = RealEditUI(pipe, images, target, **kwargs)
    ui.render()
    return ui
