"""``edit``: Prompt-to-Prompt (Hertz et al. 2022, Algorithm 1) on any SD-style pipeline.

Taught in notebook 05. The source and every target start from the same z_T and run as one batch;
in the target rows, cross-attention is edited as in :mod:`~p2p_lab.p2p.controls` and, within the
self-attention window, self-attention takes the source's probabilities. A SourceCache lets later
edits of the same source skip the source branch.

A real image (notebook 06) is edited from its inversion (:func:`p2p_lab.p2p.inversion.invert`):
every row starts from the inversion's z*_T instead of the seed's noise, is guided with the
inversion's unconditional embedding (null-text's per-step u_i, negative-prompt's source
embedding), and, for DirectInversion, the source row is put back on the inverted trajectory after
every step; ``Inversion.start_latents``, ``uncond`` and ``source_pin`` say which.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from .blend import LocalBlend
from .cache import RunKey, SourceCache, make_room
from .controls import EditControl, build_plan
from .inversion import Inversion
from .options import EditOptions
from ..unet_attention import attention_layers, require_cross_attention
from .align import refine_mapper
from .schedule import step_window
from .. import ldm
from .sampling import Run, images as decode, prompt_list, resolve_run, run_loop

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

CACHE_BUDGET_BYTES = 512 * 2 ** 20  # record everything for later edits when it fits in this


@dataclasses.dataclass
class EditResult:
    images: np.ndarray  # (1 + T, H, W, 3) float32 in [0, 1]; row 0 = source
    prompts: list[str]
    cache: SourceCache
    store: object = None
    from_cache: bool = False  # True if the source branch came from the cache
    blend_mask: np.ndarray | None = None  # local blend: its last step's mask per target, (T, h, w) bool (latent grid)

    @property
    def source_image(self) -> np.ndarray:
        return self.images[0]

    @property
    def target_images(self) -> np.ndarray:
        return self.images[1:]


def run_key(pipe, source: str, run, loop_steps: int, inversion=None) -> RunKey:
    sch = pipe.scheduler
    p = next(pipe.unet.parameters())
    return RunKey(source, run.seed if inversion is None else None, run.num_steps, loop_steps, run.guidance_scale,
                  f"{type(sch).__name__}{sorted(dict(sch.config).items())}", tuple(run.latent_hw),
                  str(p.dtype), str(p.device), id(pipe.unet), None if inversion is None else inversion.key)


def _record_all_nbytes(pipe, layers, self_max_res, n_steps) -> int:
    size = next(pipe.unet.parameters()).element_size()
    return SourceCache.estimate_nbytes(layers, pipe.tokenizer.model_max_length, n_steps, self_max_res, size)


def _source_cache(key, layers, cache, self_max_res, record_all_nbytes: int) -> SourceCache:
    if cache is not None:
        if not isinstance(cache, SourceCache):
            raise TypeError(f"cache must be a SourceCache (an EditResult's .cache), got {type(cache).__name__}")
        cache.check_key(key)
        return cache
    return SourceCache(key, layers, self_max_res, record_all=record_all_nbytes <= CACHE_BUDGET_BYTES)


def _latent_hook(cache, blend, from_cache, pin=None):
    """After each step: put the source back on an inverted trajectory (``pin(i)``: DirectInversion),
    note the source's latent (or fetch it), then apply the local blend."""
    def on_step(i, z):
        if from_cache:
            src, tgt = cache.latents[i].to(z.device), z
        else:
            src, tgt = (z[:1] if pin is None else pin(i)), z[1:]
            cache.latents.append(src.detach().clone())
        if blend is not None:
            tgt = blend.apply(i, src, tgt)
        return tgt if from_cache else torch.cat([src, tgt])
    return on_step


def edit(pipe, source: str, targets, *, options: EditOptions | None = None, cache: SourceCache | None = None,
         store=None, inversion: Inversion | None = None, **kwargs) -> EditResult:
    """Edit the image of ``source`` into each of ``targets`` (Prompt-to-Prompt).

    The edit's settings are one :class:`~p2p_lab.p2p.options.EditOptions`: ``options``, with any
    of its fields given as keywords (``edit(pipe, source, targets, cross_tau=0.6)``):

    mode: "replace" (word swap, also one word -> several), "refine" (phrase insertion by
    alignment) or None (replace when the word counts match, else refine). cross_tau: the fraction
    of steps that use the source's cross-attention: float, (start, end) or {word: ...,
    "default_": ...}. self_tau: the same for self-attention (float or (start, end)), in layers up
    to ``self_max_res``. reweight: {word: scale}. local_blend: words or a LocalBlend.
    mapper: "copy" (default) | "average" (one token -> several), replace edits only. seed: z_T's
    seed (default 0).
    context_tau: the fraction of steps (float or (start, end)) in which every target token that is
    the same token as in the source (aligned as in refine: articles, unchanged words, end and
    padding tokens) gets the source's text embedding; the edited words keep their own. CLIP's
    text encoder is causal, so every token after an edited word carries that word in its
    embedding, and a model that learned to read the object's identity and place from those tokens
    (the shipped model partly does) moves the object even when the attention maps are the
    source's. Not in the paper, so off by default (0); notebook 05 teaches it in its own section.
    progress: a progress bar over the steps (default: on for Stable Diffusion, off for the shipped model).

    The objects an edit works with: cache: an earlier result's ``.cache``. store: an
    AttentionStore to fill (rows: source, then targets). inversion: an
    :class:`~p2p_lab.p2p.inversion.Inversion` of a real image whose caption is ``source``
    (notebook 06): the rows start from its z*_T (so ``seed`` is an error) and the source row
    reconstructs the image (``source_image``); steps and guidance default to the inversion's, and
    other steps, guidance or scheduler than it was made for are an error.
    """
    opts = EditOptions.of(options, also=_OBJECTS, **kwargs)
    targets = prompt_list(targets, "targets")
    require_cross_attention(pipe.unet)
    run = _resolve(pipe, source, opts, inversion)
    e = _prepare(pipe, source, targets, run, opts, cache, store, inversion)
    return _finish(pipe, e, _sample_targets(pipe, e, store))


_OBJECTS = ("options", "cache", "store", "inversion")  # edit()'s keywords besides EditOptions' fields


def _resolve(pipe, source, opts: EditOptions, inversion) -> Run:
    """Steps, guidance and seed of the edit (from an inversion: its steps and guidance, no seed)."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source must be a non-empty prompt string, got {source!r}")
    steps, w, seed = opts.num_inference_steps, opts.guidance_scale, opts.seed
    if inversion is not None:
        if not isinstance(inversion, Inversion):
            raise TypeError(f"inversion must be an Inversion (p2p.invert(...)), got {type(inversion).__name__}")
        if seed is not None:
            raise ValueError(f"seed={seed} has no effect on an edit from an inversion (every row starts from "
                             f"the inversion's z*_T); drop seed=")
        steps, w = inversion.check_edit(pipe, source, steps, w)
    return resolve_run(pipe, 0 if seed is None else seed, steps, w, opts.progress)


@dataclasses.dataclass
class _Edit:
    """One edit's pieces, decided before sampling (see :func:`edit`)."""

    source: str
    targets: list[str]
    run: Run
    scheduler: SchedulerMixin
    cache: SourceCache
    control: EditControl
    rows: list[str]  # the prompts sampled: [source, *targets], or the targets when the source is cached
    cond: Callable[[int], torch.Tensor] | None  # None: each row's own embeddings; else step -> (rows, L, D)
    sig: "_Signature"
    inversion: Inversion | None = None  # a real image's inversion, or None (z_T from the seed)

    @property
    def n(self) -> int:
        return len(self.scheduler.timesteps)

    @property
    def from_cache(self) -> bool:
        return self.control.from_cache


def _prepare(pipe, source, targets, run: Run, opts: EditOptions, cache, store, inversion=None) -> _Edit:
    """The plan, the blend, the cache and the control of an edit; whether the source is cached."""
    layers = attention_layers(pipe, run.latent_hw)
    scheduler = ldm.fresh_scheduler(pipe, run.num_steps)
    n = len(scheduler.timesteps)  # the loop's steps schedule tau
    plan = build_plan(pipe.tokenizer, source, targets, num_steps=n, **opts.plan_options())
    blend = _blend_state(opts.local_blend, pipe.tokenizer, [source, *targets], layers, run.latent_hw, n)
    est = _record_all_nbytes(pipe, layers, plan.self_max_res, n)
    cache = _source_cache(run_key(pipe, source, run, n, inversion), layers, cache, plan.self_max_res, est)
    control = EditControl(plan, cache, False, store, blend, run.latent_hw)
    from_cache = control.from_cache = cache.covers(control.needs_source)
    rows = targets if from_cache else [source, *targets]
    if not from_cache:
        cache.clear()
        # the source's rows stay views of their batch (no copies) when every batch fits the budget
        batch = len(rows) * (2 if run.cfg else 1)
        cache.views = batch * est <= CACHE_BUDGET_BYTES
        make_room(cache, batch * est if cache.views else est)  # other live caches give way to this one
    cond, window = _context_schedule(pipe, source, targets, rows, opts.context_tau, n, from_cache)
    return _Edit(source, targets, run, scheduler, cache, control, rows, cond,
                 _Signature.of(plan, targets, window, n), inversion)


def _sample_targets(pipe, e: _Edit, store) -> torch.Tensor:
    """Run the loop (from the first step whose settings changed, where a re-run can resume) and
    keep the targets' latents after every step for the next re-run. Returns z_0."""
    n, cache = e.n, e.cache
    start, z_start = 0, None
    resumable = _stateless(pipe.scheduler)  # only then can a later re-run start mid-way
    if e.from_cache and store is None and e.control.blend is None and resumable:
        start = e.sig.resume_step(cache.trail)
        z_start = cache.trail.latents[start - 1] if start else None
    inv = e.inversion
    if inv is not None and not start:
        z_start = inv.start_latents(pipe, len(e.rows))  # (rows, C, h, w): z*_T for every row
    cache.resumed_at = start if start else None
    trail = [None] * n
    hook = _latent_hook(cache, e.control.blend, e.from_cache, None if inv is None else inv.source_pin(pipe))

    def on_step(i, z):
        z = hook(i, z)
        if resumable:
            trail[i] = (z if e.from_cache else z[1:]).detach().clone()
        return z

    z0 = run_loop(pipe, e.rows, e.run, e.control, on_step, cond=e.cond, latents=z_start, start=start,
                  scheduler=e.scheduler, uncond=None if inv is None else inv.uncond(pipe))
    if start == n:
        z0 = z_start
    if start:
        trail[:start] = cache.trail.latents[:start]
    cache.trail = _Trail(e.sig, trail) if resumable else None
    return z0


def _finish(pipe, e: _Edit, z0: torch.Tensor) -> EditResult:
    images = decode(pipe, z0)  # (rows, H, W, 3)
    if e.from_cache:
        e.cache.hits += 1
        images = np.concatenate([e.cache.image[None], images])
    else:
        e.cache.image = images[0].copy()
    e.cache.touch()
    make_room(e.cache)
    last = None if e.control.blend is None else e.control.blend.last_mask
    mask = None if last is None else last[:, 0].cpu().numpy()
    return EditResult(images, [e.source, *e.targets], e.cache, e.control.store, e.from_cache, mask)


def _context_schedule(pipe, source, targets, rows, context_tau, n, from_cache):
    """None (each row's own embeddings throughout) or a callable step -> embeddings of ``rows``."""
    window = step_window(context_tau, n, "context_tau")
    if not window.any():
        return None, window
    own = ldm.encode_text(pipe, [source, *targets])
    kept = context_embeddings(pipe, source, targets, own)
    first = 1 if from_cache else 0  # rows: the targets alone when the source comes from the cache
    own, kept = own[first:], kept[first:]
    return (lambda i: kept if window[i] else own), window


def _stateless(scheduler) -> bool:
    """Schedulers whose step depends on the timestep alone (no multistep history, no step counter)."""
    from diffusers import DDIMScheduler

    return type(scheduler) is DDIMScheduler


def _bytes(t: torch.Tensor) -> tuple:
    return tuple(t.shape), t.detach().cpu().float().numpy().tobytes()


@dataclasses.dataclass(frozen=True)
class _Signature:
    """What decides the target rows' computation: once per edit, and per loop step."""

    fixed: tuple
    steps: tuple

    @classmethod
    def of(cls, plan, targets, window, n):
        fixed = (tuple(targets), tuple(plan.modes), plan.self_max_res,
                 *(_bytes(getattr(plan, name)) for name in plan.PER_TOKEN if name != "alpha"))
        steps = tuple((_bytes(plan.alpha[:, i]), bool(plan.self_steps[i]), bool(window[i])) for i in range(n))
        return cls(fixed, steps)

    def resume_step(self, trail) -> int:
        """The first step whose settings differ from the trail's (0: no reuse, n: nothing new)."""
        if trail is None or trail.sig.fixed != self.fixed or len(trail.sig.steps) != len(self.steps):
            return 0
        for i, (a, b) in enumerate(zip(trail.sig.steps, self.steps)):
            if a != b:
                return i
        return len(self.steps)


@dataclasses.dataclass
class _Trail:
    sig: _Signature
    latents: list  # (T, C, h, w) after each step


def context_embeddings(pipe, source: str, targets: list[str], emb: torch.Tensor | None = None) -> torch.Tensor:
    """Text embeddings (1 + T, L, D) of source and targets, where every target token that is the
    same token as in the source (global alignment, as in refine) takes the source's embedding.
    ``emb``: the prompts' own embeddings, if already computed (not changed)."""
    emb = (ldm.encode_text(pipe, [source, *targets]) if emb is None else emb).clone()
    for k, target in enumerate(targets, 1):
        index, alphas = refine_mapper(pipe.tokenizer, source, target)
        keep = alphas.bool().to(emb.device)
        emb[k, keep] = emb[0, index.to(emb.device)[keep]]
    return emb


def _blend_state(local_blend, tok, prompts, layers, latent_hw, n):
    if local_blend is None:
        return None
    if not isinstance(local_blend, LocalBlend):
        local_blend = LocalBlend(local_blend)
    return local_blend.state(tok, prompts, layers, latent_hw, n)


def reweight_response(pipe, prompt: str, reads: dict, scales, seeds=(0, 1, 2),
                      num_inference_steps: int | None = None, **options) -> dict:
    """How much each word's re-weighting changes the picture: ``{word: changes}``, one change per scale.

    reads: ``{word: measure}``, a measure of :func:`p2p_lab.metrics.object_measures` (``"radius"``,
    ``"area"``, ``"hue"``, ``"bg_hue"``, ``"shading"``). For each word and seed, one edit of ``prompt``
    into itself re-weights the word by every scale (each scale a target row, the source shared); the
    change is the measure at that scale minus the measure at scale 1 (the unedited picture; hues wrap
    to -180..180 degrees), averaged over the seeds (nan where the scorer found no object).
    ``options``: other settings of the edit (:class:`~p2p_lab.p2p.options.EditOptions` fields), e.g.
    ``cross_tau=1.0`` to keep the scaling to the last step.
    """
    from ..metrics import object_measures

    scales, seeds = [float(c) for c in scales], list(seeds)
    if 1.0 not in scales:
        raise ValueError(f"reweight_response measures changes from the unedited picture: put 1.0 in the "
                         f"scales (got {scales})")
    unedited = scales.index(1.0)
    out = {}
    for word, what in reads.items():
        total = np.zeros(len(scales))
        for seed in seeds:
            res = edit(pipe, prompt, [prompt] * len(scales), reweight=[{word: c} for c in scales],
                       seed=seed, num_inference_steps=num_inference_steps, **options)
            vals = np.array([object_measures(img)[what] for img in res.target_images])
            delta = vals - vals[unedited]
            total += (delta + 180) % 360 - 180 if "hue" in what else delta
        out[word] = total / len(seeds)
    return out
