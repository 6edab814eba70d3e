"""Widgets for notebook 05: scrub tau, per-word alpha and re-weighting and watch the edit change.

``make_edit_ui`` shows source | fixed seed | Prompt-to-Prompt edit and the attention maps of the
edited words; every control change re-runs only the target branch (the source branch comes from
the engine's :class:`~p2p_lab.p2p.SourceCache`). ``make_attention_explorer`` shows one prompt's
cross-attention per token, step and layer. All drawing is done by the pure functions of
:mod:`p2p_lab.viz.p2p`; this module only wires controls to them.
"""
from __future__ import annotations

import dataclasses

import difflib
import time

from ..viz import p2p as viz

__all__ = ["EditUI", "AttentionExplorer", "make_edit_ui", "make_attention_explorer",
           "changed_words"]

_SLIDER = dict(min=0.0, max=1.0, step=0.05, continuous_update=False, readout_format=".2f")


def changed_words(source: str, target: str) -> tuple[list[str], list[str]]:
    """The words of ``source`` that the target drops and the words of ``target`` it adds."""
    s, t = source.split(), target.split()
    dropped, added = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=s, b=t, autojunk=False).get_opcodes():
        if op != "equal":
            dropped += s[i1:i2]
            added += t[j1:j2]
    return dropped, added


def _layout(width="360px"):
    import ipywidgets as W

    return W.Layout(width=width)


class EditUI:
    """Controls + view of one source -> target edit (see :func:`make_edit_ui`)."""

    def __init__(self, pipe, source: str, target: str, *, seed: int = 0,
                 num_inference_steps: int = 20, guidance_scale: float | None = None,
                 cross_tau: float = 0.8, self_tau: float = 0.4, context_tau: float = 0.0,
                 mode: str | None = None, alpha_words: list[str] | None = None, cache=None, fixed_image=None, dpi: int = 70):
        import ipywidgets as W

        from ..p2p import EditOptions, words_of

        self.pipe, self.source, self.target, self.dpi = pipe, source, target, dpi
        # what the sliders do not change
        self.fixed = EditOptions(mode=mode, seed=seed, num_inference_steps=num_inference_steps,
                                 guidance_scale=guidance_scale)
        dropped, added = changed_words(source, target)
        self.source_word = dropped[0] if dropped else None
        self.target_word = added[0] if added else None
        words = [w.text for w in words_of(pipe.tokenizer, target)]
        content = [w for w in dict.fromkeys(words) if w not in ("a", "on", "and")]
        self.alpha_words = list(alpha_words) if alpha_words is not None else (added or content[:1])
        self.cross_tau = W.FloatSlider(value=cross_tau, description="cross tau", **_SLIDER,
                                       layout=_layout())
        self.self_tau = W.FloatSlider(value=self_tau, description="self tau", **_SLIDER,
                                      layout=_layout())
        self.context_tau = W.FloatSlider(value=context_tau, description="context tau", **_SLIDER,
                                         layout=_layout())
        self.word_own = {w: W.Checkbox(value=False, description=f"own tau for '{w}'", indent=False,
                                       layout=_layout("170px")) for w in self.alpha_words}
        self.word_tau = {w: W.FloatSlider(value=cross_tau, description=f"tau['{w}']", disabled=True,
                                          **_SLIDER, layout=_layout("300px")) for w in self.alpha_words}
        self.reweight_word = W.Dropdown(options=["(none)"] + content, value="(none)",
                                        description="reweight", layout=_layout("240px"))
        self.reweight_scale = W.FloatSlider(value=1.0, min=-2.0, max=4.0, step=0.25,
                                            description="scale c", continuous_update=False,
                                            layout=_layout())
        self.view = W.HTML(layout=W.Layout(min_height="300px"))
        self.status = W.HTML()
        self.cache, self.fixed_image, self.result, self.figure = cache, fixed_image, None, None
        self.last_seconds, self.renders = None, 0
        self._wire()
        self.widget = W.VBox([W.HBox([self.cross_tau, self.self_tau]), self.context_tau,
                              *[W.HBox([self.word_own[w], self.word_tau[w]]) for w in self.alpha_words],
                              W.HBox([self.reweight_word, self.reweight_scale]),
                              self.status, self.view])

    # ---------------------------------------------------------------- wiring

    def _wire(self) -> None:
        for w in [self.cross_tau, self.self_tau, self.context_tau, self.reweight_word, self.reweight_scale,
                  *self.word_tau.values()]:
            w.observe(self._changed, names="value")
        for word, box in self.word_own.items():
            box.observe(self._own_toggled(word), names="value")

    def _own_toggled(self, word):
        def toggled(change):
            self.word_tau[word].disabled = not change["new"]
            self._changed(change)
        return toggled

    def _changed(self, change) -> None:
        self.render()

    # ---------------------------------------------------------------- what to run

    def settings(self):
        """The :class:`~p2p_lab.p2p.EditOptions` the controls stand for."""
        tau = {w: self.word_tau[w].value for w in self.alpha_words if self.word_own[w].value}
        cross = {"default_": self.cross_tau.value, **tau} if tau else self.cross_tau.value
        word = self.reweight_word.value
        reweight = None if word == "(none)" else {word: float(self.reweight_scale.value)}
        return dataclasses.replace(self.fixed, cross_tau=cross, self_tau=self.self_tau.value,
                                   context_tau=self.context_tau.value, reweight=reweight)

    def title(self) -> str:
        s = self.settings()
        parts = [f"cross tau={self.cross_tau.value:.2f}", f"self tau={s.self_tau:.2f}",
                 f"context tau={s.context_tau:.2f}"]
        parts += [f"tau['{w}']={self.word_tau[w].value:.2f}" for w in self.alpha_words
                  if self.word_own[w].value]
        if s.reweight:
            (w, c), = s.reweight.items()
            parts.append(f"reweight '{w}' x{c:g}")
        return "P2P edit: " + ", ".join(parts)

    # ---------------------------------------------------------------- running and drawing

    def compute(self):
        """Run the edit with the current settings (source branch from the cache after the first)."""
        from ..p2p import AttentionStore, edit, fixed_seed

        if self.fixed_image is None:
            f = self.fixed
            self.fixed_image = fixed_seed(self.pipe, self.source, self.target, seed=f.seed or 0,
                                          num_inference_steps=f.num_inference_steps,
                                          guidance_scale=f.guidance_scale)[1]
        store = AttentionStore(per_step=False)
        self.result = edit(self.pipe, self.source, self.target, options=self.settings(), cache=self.cache,
                           store=store)
        self.cache = self.result.cache
        return self.result

    def draw(self, result, title: str):
        """The figure for a result: images on top, the edited words' maps below."""
        tok, store = self.pipe.tokenizer, result.store
        maps = {}
        if self.source_word:
            maps[f"source: '{self.source_word}'"] = store.word_map(tok, self.source, self.source_word, 0)
        if self.target_word:
            maps[f"edit: '{self.target_word}'"] = store.word_map(tok, self.target, self.target_word, 1)
        rw = self.settings().reweight
        if rw:
            (w, _), = rw.items()
            maps[f"edit: '{w}' (reweighted)"] = store.word_map(tok, self.target, w, 1)
        images = {"source": result.images[0], "fixed seed": self.fixed_image,
                  "Prompt-to-Prompt": result.images[1]}
        return viz.plot_edit_view(images, maps, title)

    def render(self):
        """Re-run and redraw; errors from a setting are shown in the status line, not raised."""
        start = time.perf_counter()
        try:
            result = self.compute()
        except (ValueError, TypeError) as err:
            self.status.value = f'<span style="color:#b00">{type(err).__name__}: {err}</span>'
            return self.figure
        title = self.title()
        self.figure = self.draw(result, title)
        self.view.value = viz.figure_to_html(self.figure, self.dpi)
        self.last_seconds = time.perf_counter() - start
        self.renders += 1
        cached = "source from cache" if result.from_cache else "source computed"
        self.status.value = (f'<span class="p2p-status">{title} ({self.last_seconds:.2f} s, '
                             f'{cached})</span>')
        return self.figure

    def _ipython_display_(self):
        from IPython.display import display

        if self.figure is None:
            self.render()
        display(self.widget)


def make_edit_ui(pipe, source: str, target: str, **kwargs) -> EditUI:
    """Sliders for cross tau, self tau, context tau, per-word tau (alpha) and a reweight scale, and a view of
    source | fixed seed | Prompt-to-Prompt edit with the edited words' attention maps (notebook 05).

    Keyword options: seed, num_inference_steps (default 20), guidance_scale, cross_tau, self_tau,
    context_tau (default 0, the paper; see ``p2p_lab.p2p.edit``), mode ("replace" | "refine" | None), alpha_words (words that get their own tau slider;
    default: the words the target adds), cache (an earlier EditResult's ``.cache`` for the same
    source, seed and steps), fixed_image (the fixed-seed baseline, if already computed).
    Display the returned object to use it.
    """
    ui = EditUI(pipe, source, target, **kwargs)
    ui.render()
    return ui


# -------------------------------------------------------------------- attention explorer

ALL = "all (average)"


def layer_map(store, layer_name: str, step: int | None, prompt_index: int = 0):
    """One layer's head-averaged map (rows, cols, n_tokens) at ``step`` (None: mean over steps)."""
    info = store.layer_info[layer_name]
    keys = [k for k in store.sums if k[0] == layer_name and (step is None or k[1] == step)]
    if not keys:
        raise ValueError(f"layer {layer_name!r} has no maps recorded at step {step}")
    m = sum(store.sums[k][prompt_index] for k in keys) / sum(store.counts[k] for k in keys)
    h, w = info.resolution
    return m.reshape(h, w, -1)  # (rows, cols, n_tokens)


class AttentionExplorer:
    """Token x step x layer view of one prompt's cross-attention (see :func:`make_attention_explorer`)."""

    def __init__(self, pipe, prompt: str, *, seed: int = 0, num_inference_steps: int = 20,
                 guidance_scale: float | None = None, dpi: int = 70):
        import ipywidgets as W

        from ..p2p import AttentionStore, record_maps

        self.store = AttentionStore(per_step=True)
        self.image = record_maps(pipe, [prompt], self.store, seed=seed, num_inference_steps=num_inference_steps,
                                 guidance_scale=guidance_scale)[0]
        self.labels = viz.token_labels(pipe.tokenizer, prompt)
        self.num_steps, self.dpi, self.prompt = num_inference_steps, dpi, prompt
        cross = [l for l in self.store.layers if l.is_cross]
        self.token = W.Dropdown(options=[(f"{j}: {t}", j) for j, t in enumerate(self.labels)],
                                value=min(2, len(self.labels) - 1), description="token")
        self.step = W.IntSlider(value=num_inference_steps - 1, min=0, max=num_inference_steps - 1,
                                description="step", continuous_update=False)
        self.all_steps = W.Checkbox(value=False, description="average over steps", indent=False)
        self.layer = W.Dropdown(options=[ALL] + [f"{l.name} ({l.res}x{l.res})" for l in cross],
                                value=ALL, description="layer", layout=_layout("520px"))
        self._names = {f"{l.name} ({l.res}x{l.res})": l.name for l in cross}
        self.view = W.HTML()
        self.figure = None
        for w in (self.token, self.step, self.all_steps, self.layer):
            w.observe(lambda change: self.render(), names="value")
        self.widget = W.VBox([W.HBox([self.token, self.step, self.all_steps]), self.layer, self.view])

    def maps(self):
        """(rows, cols, n_tokens) for the chosen step and layer."""
        step = None if self.all_steps.value else self.step.value
        if self.layer.value == ALL:
            return self.store.maps(0, None, step)
        return layer_map(self.store, self._names[self.layer.value], step)

    def title(self) -> str:
        step = "all steps" if self.all_steps.value else f"step {self.step.value}/{self.num_steps - 1}"
        j = self.token.value
        return f"'{self.labels[j]}' (token {j}), {step}, layer: {self.layer.value}"

    def render(self):
        self.figure = viz.plot_token_maps(self.maps().permute(2, 0, 1), self.labels, self.image,
                                          [self.token.value], overlay=True, title=self.title(), size=2.2)
        self.view.value = viz.figure_to_html(self.figure, self.dpi)
        return self.figure

    def _ipython_display_(self):
        from IPython.display import display

        if self.figure is None:
            self.render()
        display(self.widget)


def make_attention_explorer(pipe, prompt: str, **kwargs) -> AttentionExplorer:
    """Cross-attention of ``prompt`` by token, sampling step and layer (notebook 05).

    Samples once with an AttentionStore (keyword options: seed, num_inference_steps,
    guidance_scale), then every control change only redraws.
    """
    ui = AttentionExplorer(pipe, prompt, **kwargs)
    ui.render()
    return ui
