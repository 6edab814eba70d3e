"""Source caching: run the source branch once, reuse its attention and latents for many edits.

Taught in notebook 05 (scrubbing tau re-runs only the targets). A SourceCache belongs to one
source prompt, seed (or inversion of a real image, notebook 06), step count, guidance scale,
scheduler, latent size and UNet. It holds the
source's per-head queries and keys (not the probabilities: for SD's 64x64 self-attention they are
4096 x 40 numbers per head instead of 4096 x 4096) for (layer, step) pairs and its latent after
every step; the engine attends with them directly (see :class:`~p2p_lab.p2p.controls.EditControl`).
When everything an edit could ask for fits in the budget (``p2p_lab.p2p.edit.CACHE_BUDGET_BYTES``),
it records every cross-attention layer and every self-attention layer the edit may replace at every
step, so later calls with another tau, alpha, reweighting, blend or target reuse it; otherwise only
what the first edit needed, and a later call that needs more re-runs the source and refills the
cache. The recorded rows stay views of the batch they came from (no copy) when that whole batch
fits the budget too (``views``); otherwise they are copied.

It also keeps the last edit's target latents after every step ("trail"). Under a scheduler whose
step depends on nothing but the timestep (DDIM), a re-run whose per-step settings (alpha, the
self-attention and context windows) first differ at step k starts at step k from the trail: moving
tau from 0.8 to 0.6 recomputes only the last 40 % of the steps, and gives the same result.

Every cache an edit fills or reuses joins one pool of live caches (weak references: a cache whose
results are gone leaves it). Before an edit fills a cache, and after it, the least recently used
*other* caches are emptied until all of them together hold at most ``CACHE_TOTAL_BYTES``
(:func:`make_room`). An emptied cache still works: the next edit that passes it re-runs the source
and fills it again (``evictions`` counts how often that was needed). On the shipped model caches are
a few MB and nothing is emptied; on Stable Diffusion at 50 steps one cache can hold 1.5 GB in fp16,
and a notebook that keeps many edit results would otherwise run out of GPU memory.
"""
from __future__ import annotations

import dataclasses
import itertools
import weakref

import numpy as np
import torch

from ..unet_attention import LayerInfo

CACHE_TOTAL_BYTES = 2 * 2 ** 30  # what the live caches may hold together (see make_room)
_LIVE: "weakref.WeakSet[SourceCache]" = weakref.WeakSet()
_CLOCK = itertools.count()


@dataclasses.dataclass(frozen=True)
class RunKey:
    """What fixes the source branch."""

    source: str
    seed: int | None  # None: z_T comes from an inversion
    num_steps: int  # as asked
    loop_steps: int  # UNet calls of the sampling loop (PNDM's warm-up adds some)
    guidance_scale: float
    scheduler: str  # class name and config
    latent_hw: tuple[int, int]
    dtype: str
    device: str
    unet_id: int
    inversion: str | None = None  # the Inversion's key (p2p_lab.p2p.inversion), None for a generated source


@dataclasses.dataclass(eq=False)  # identity: a cache is one run's record, not a value
class SourceCache:
    key: RunKey
    layers: list[LayerInfo]
    self_max_res: int
    record_all: bool = True
    qk: dict = dataclasses.field(default_factory=dict, repr=False)  # (layer, step) -> (q, k, mask)
    latents: list = dataclasses.field(default_factory=list, repr=False)  # (1, C, h, w) after each step
    image: np.ndarray | None = dataclasses.field(default=None, repr=False)  # (H, W, 3)
    hits: int = 0  # how many edits reused it
    # The last edit's target latents after every step, with what decided each step (see
    # p2p_lab.p2p.edit): a re-run that differs only from step k on resumes there.
    trail: object = dataclasses.field(default=None, repr=False)
    resumed_at: int | None = None  # the step the last edit resumed from (None: no reuse)
    views: bool = False  # keep the recorded rows as views of their batch (set by the edit filling it)
    evictions: int = 0  # how often make_room emptied it to make room for another cache
    held: int = 0  # nbytes as of the last edit that used it (what make_room counts)
    last_used: int = -1  # make_room's clock at that edit

    def keeps(self, layer: LayerInfo) -> bool:
        """Does the record-everything policy keep this layer?"""
        return self.record_all and (layer.is_cross or layer.res <= self.self_max_res)

    def put(self, layer: LayerInfo, step: int, qk: tuple) -> None:
        """The source's (q (1, heads, n_q, d), k (1, heads, n_k, d), mask or None): kept as they
        are (rows of the batch's projections, which nothing writes to) when ``views`` is set,
        else copied (a row keeps its whole batch alive: worth it only when that fits)."""
        if self.views:  # (the engine runs under no_grad: nothing to detach)
            self.qk[(layer.name, step)] = qk
        else:
            self.qk[(layer.name, step)] = tuple(None if t is None else t.clone() for t in qk)

    def get(self, layer: LayerInfo, step: int) -> tuple:
        return self.qk[(layer.name, step)]

    def covers(self, needs_source) -> bool:
        """True if every (layer, step) with ``needs_source(layer, step)`` is recorded."""
        if len(self.latents) != self.key.loop_steps or self.image is None:
            return False
        return all((l.name, s) in self.qk for s in range(self.key.loop_steps)
                   for l in self.layers if needs_source(l, s))

    def check_key(self, key: RunKey) -> None:
        diff = [f.name for f in dataclasses.fields(RunKey) if getattr(key, f.name) != getattr(self.key, f.name)]
        if diff:
            raise ValueError(f"this SourceCache was made for another source run (differs in {diff}); "
                             f"pass cache=None or use the same source, seed (or inversion), steps, guidance and scheduler")

    def clear(self) -> None:
        self.qk.clear(), self.latents.clear()
        self.image = self.trail = None
        self.held = 0

    def touch(self) -> None:
        """Note that an edit used it now, and what it holds (it joins the pool of live caches)."""
        self.last_used, self.held = next(_CLOCK), self.nbytes
        _LIVE.add(self)

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds on to (a view counts its whole batch, once)."""
        ts = [t for qk in self.qk.values() for t in qk if t is not None] + list(self.latents) + (list(self.trail.latents) if self.trail else [])
        held = {}
        for t in ts:
            storage = t.untyped_storage()
            held[(t.device, storage.data_ptr())] = storage.nbytes()
        return sum(held.values())

    @staticmethod
    def estimate_nbytes(layers: list[LayerInfo], n_tokens: int, num_steps: int, self_max_res: int,
                        element_size: int = 4) -> int:
        """Bytes of the record-everything policy (the source's queries and keys)."""
        per_step = 0
        for l in layers:
            n_q = l.resolution[0] * l.resolution[1]
            if l.is_cross:
                per_step += l.heads * l.head_dim * (n_q + n_tokens)
            elif l.res <= self_max_res:
                per_step += l.heads * l.head_dim * 2 * n_q
        return per_step * num_steps * element_size


def make_room(cache: SourceCache, reserve: int = 0, budget: int | None = None) -> list[SourceCache]:
    """Empty the least recently used live caches other than ``cache`` until they, ``cache`` and
    ``reserve`` more bytes fit in ``budget`` (default ``CACHE_TOTAL_BYTES``). Returns those emptied."""
    budget = CACHE_TOTAL_BYTES if budget is None else budget
    others = sorted((c for c in list(_LIVE) if c is not cache and c.held), key=lambda c: c.last_used)
    total = sum(c.held for c in others) + (cache.held if cache in _LIVE else 0) + reserve
    emptied = []
    for c in others:
        if total <= budget:
            break
        total -= c.held
        c.clear()
        c.evictions += 1
        emptied.append(c)
    return emptied
