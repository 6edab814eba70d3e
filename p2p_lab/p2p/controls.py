"""The edits of Prompt-to-Prompt as one plan, and the controls the attention hook consults.

Taught in notebook 05. For target k at loop step i, a cross-attention layer attends with
:func:`~p2p_lab.p2p.equations.edited_maps`:

    A_edit = alpha_{k,i} (.) ((A M_k + A*_k (.) keep_k) (.) w_k) + (1 - alpha_{k,i}) (.) A*_k

with A the source's probabilities, A*_k the target's own, M_k the mapper (word swap or alignment),
keep_k = 1 for target tokens the alignment leaves new (refine), w_k the reweighting scales, and
alpha the per-token schedule from tau; or, wherever nobody reads the maps, with the same edit moved
onto the values (:func:`~p2p_lab.p2p.equations.value_maps`). In the self-attention window the
target takes the source's self-attention probabilities.
"""
from __future__ import annotations

import dataclasses
import numbers

import torch
import torch.nn.functional as F

from . import equations as eq
from .align import refine_mapper, refine_matrix, replace_mapper, token_indices, words_of
from ..unet_attention import Control, LayerInfo, attend_all, attention_probs
from .schedule import DEFAULT_KEY, alpha_schedule, step_window

MODES = ("replace", "refine")


@dataclasses.dataclass
class EditPlan:
    """Everything an edit needs per target, as tensors (T targets, L tokens, n steps)."""

    M: torch.Tensor  # (T, L, L) source token -> target token
    keep: torch.Tensor  # (T, L) weight of the target's own map inside A_hat
    weights: torch.Tensor  # (T, L) reweighting scales (1 = unchanged)
    alpha: torch.Tensor  # (T, n, L) 1 where the source's map is used
    self_steps: torch.Tensor  # (n,) bool: steps that use the source's self-attention
    self_max_res: int  # self-attention is replaced only in layers up to this resolution
    modes: list[str]

    # The per-token terms of the edit, in the order equations.edited_maps / value_maps take them
    # (a new per-token edit adds its tensor here, to build_plan and to the equations).
    PER_TOKEN = ("M", "keep", "weights", "alpha")

    def __post_init__(self):
        self._cross = self.alpha.any(-1).any(0).tolist()  # per step: any source map used
        self._self = self.self_steps.tolist()
        self._on = {}  # device -> (M, keep, weights, alpha) there
        self._values = {}  # (step, device, dtype) -> value_maps
        # Steps where every target takes the source's maps unchanged (identity mapper, nothing
        # kept or reweighted, alpha 1 for every token): there A_edit = A, so the targets attend
        # with the source's queries and keys and their own values as they are (value_maps: P = I).
        n_tok = self.M.shape[-1]
        plain = (torch.equal(self.M, torch.eye(n_tok).expand_as(self.M)) and not bool(self.keep.any())
                 and bool((self.weights == 1).all()))
        self._copy = [plain and bool((self.alpha[:, i] == 1).all()) for i in range(self.alpha.shape[1])]

    def cross_active(self, step: int) -> bool:
        return self._cross[step]

    def copies_source(self, step: int) -> bool:
        """True if at this step every target attends with the source's cross-attention as it is."""
        return self._copy[step]

    def self_active(self, layer: LayerInfo, step: int) -> bool:
        return self._self[step] and layer.res <= self.self_max_res

    def _tensors(self, device):
        if device not in self._on:
            self._on[device] = tuple(getattr(self, name).to(device) for name in self.PER_TOKEN)
        return self._on[device]

    def edit_cross(self, src: torch.Tensor, tgt: torch.Tensor, step: int) -> torch.Tensor:
        """src (heads, q, L), tgt (T, heads, q, L) -> edited target probabilities (T, heads, q, L)."""
        M, keep, w, alpha = self._tensors(src.device)
        per_token = lambda x: x[:, None, None, :]  # noqa: E731  (T, L) -> (T, 1, 1, L)
        return eq.edited_maps(src, tgt, M[:, None], per_token(keep), per_token(w), per_token(alpha[:, step]))

    def value_maps(self, step: int, device, dtype=torch.float32):
        """The edit of ``edit_cross`` moved onto the values (:func:`~p2p_lab.p2p.equations.value_maps`):
        A_edit V = A (P V) + A* (c V), two fused attention calls, the first with the source's
        queries and keys. Returns (P or None for the identity, c or None where c is 0 for every
        token), each (T, L, L) / (T, L) on ``device`` in ``dtype``.
        """
        key = (step, device, dtype)
        if key not in self._values:
            M, keep, w, alpha = self._tensors(device)
            P, c = eq.value_maps(M, keep, w, alpha[:, step])  # (T, L, L), (T, L)
            P = None if self.copies_source(step) else P.to(dtype)
            self._values[key] = (P, None if bool((c == 0).all()) else c.to(dtype))
        return self._values[key]


def resolve_mode(tokenizer, source: str, target: str, mode: str | None) -> str:
    if mode is None:
        same = len(words_of(tokenizer, source)) == len(words_of(tokenizer, target))
        return "replace" if same else "refine"
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is unknown; use 'replace' (word swap), 'refine' "
                         f"(phrase insertion) or None (replace when word counts match)")
    return mode


def reweight_scales(tokenizer, targets: list[str], reweight) -> torch.Tensor:
    """(T, L) scales: ``reweight[word]`` on the word's tokens in each target that has the word.

    ``reweight``: {word: scale} for every target, or a list of such dicts, one per target (a sweep
    over scales as one batch: ``edit(pipe, p, [p] * 3, reweight=[{w: 0}, {w: 1}, {w: 2}])``).
    """
    w = torch.ones(len(targets), tokenizer.model_max_length)
    if reweight is None:
        return w
    if isinstance(reweight, (list, tuple)):
        if len(reweight) != len(targets):
            raise ValueError(f"reweight as a list needs one dict per target: {len(reweight)} dicts for "
                             f"{len(targets)} targets")
        for k, (target, one) in enumerate(zip(targets, reweight)):
            w[k] = reweight_scales(tokenizer, [target], one)[0]
        return w
    if not isinstance(reweight, dict):
        raise TypeError(f"reweight must be a dict {{word: scale}} (or one per target), got {type(reweight).__name__}")
    for word, scale in reweight.items():
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"reweight[{word!r}] must be a number (negative allowed), got {scale!r}")
        found = False
        for k, prompt in enumerate(targets):
            try:
                w[k, token_indices(tokenizer, prompt, word)] = float(scale)
                found = True
            except ValueError:
                continue
        if not found:
            raise ValueError(f"reweight word {word!r} is in none of the target prompts {targets}")
    return w


def _has(tokenizer, prompt: str, word) -> bool:
    try:
        token_indices(tokenizer, prompt, word)
        return True
    except ValueError:
        return False


def _words_in(tokenizer, prompt: str, cross_tau):
    """A per-word cross_tau restricted to the words of one target prompt."""
    if not isinstance(cross_tau, dict):
        return cross_tau
    return {w: t for w, t in cross_tau.items() if w == DEFAULT_KEY or _has(tokenizer, prompt, w)}


def _check_words(tokenizer, targets, words, what: str) -> None:
    for w in words:
        if w != DEFAULT_KEY and not any(_has(tokenizer, p, w) for p in targets):
            raise ValueError(f"{what} word {w!r} is not in the prompt of any target {targets}; "
                             f"name a word of a target prompt")


def _refuse_mapper(tokenizer, source: str, target: str, mapper) -> None:
    """A mapper only maps a replace edit's swapped tokens: an edit whose targets all refine ignores it."""
    n_s, n_t = len(words_of(tokenizer, source)), len(words_of(tokenizer, target))
    raise ValueError(f"mapper={mapper!r} has no effect on a refine edit ({source!r} has {n_s} words, {target!r} "
                     f"has {n_t}: aligned by refinement, no mapper); drop mapper=, or swap words one for one "
                     f"(the same number of words) for a replace edit")


def build_plan(tokenizer, source: str, targets: list[str], *, mode=None, cross_tau=0.8, self_tau=0.4,
               reweight=None, mapper: str | None = None, num_steps: int, self_max_res: int = 16) -> EditPlan:
    """The per-target mappers, schedules and scales of an edit (the fields of
    :class:`~p2p_lab.p2p.options.EditOptions`; errors name the fix). ``mapper`` None: "copy"."""
    if isinstance(cross_tau, dict):
        _check_words(tokenizer, targets, cross_tau, "cross_tau")
    Ms, keeps, alphas, modes = [], [], [], []
    for target in targets:
        m = resolve_mode(tokenizer, source, target, mode)
        if m == "replace":
            M, keep = replace_mapper(tokenizer, source, target, mapper or "copy"), torch.zeros(tokenizer.model_max_length)
        else:
            index, a = refine_mapper(tokenizer, source, target)
            M, keep = refine_matrix(index, a), 1 - a
        Ms.append(M), keeps.append(keep), modes.append(m)
        alphas.append(alpha_schedule(tokenizer, target, _words_in(tokenizer, target, cross_tau), num_steps))
    if mapper is not None and "replace" not in modes:  # every target refines: no mapper is read
        _refuse_mapper(tokenizer, source, targets[0], mapper)
    return EditPlan(torch.stack(Ms), torch.stack(keeps), reweight_scales(tokenizer, targets, reweight),
                    torch.stack(alphas), step_window(self_tau, num_steps, "self_tau"),
                    int(self_max_res), modes)


class StoreControl(Control):
    """Plain sampling that records maps into an AttentionStore (no edit)."""

    def __init__(self, store, latent_hw, n_uncond: int = 0):
        super().__init__(latent_hw)
        self.store, self.n_uncond = store, n_uncond

    def wants(self, layer):
        return self.store.wants(layer, self.step)

    def attention(self, layer, q, k, v, mask):
        return attend_all(self, layer, q, k, v, mask)

    def attend(self, layer, probs):
        self.store.add(layer, self.step, probs)
        return probs


class EditControl(Control):
    """Source row + target rows (or target rows with the source's queries and keys from a SourceCache).

    Wherever nothing asks for the probabilities themselves (no attention store, no local blend at
    this layer and step), every edit is computed with torch's fused attention: a target that
    attends with the source's probabilities A = softmax(Q K^T / sqrt(d)) is attention with the
    source's queries and keys and the target's values (see ``EditPlan.value_maps`` for replace,
    refine, reweight and alpha). Otherwise the probabilities are computed explicitly (``attend``).
    Setting ``fused = False`` forces the explicit path everywhere (the reference in the tests).
    """

    fused = True

    # What a layer does at a step (decided once per layer and step, see ``_route``):
    PLAIN = "plain"  # nothing edited: every row attends as usual (the source may be recorded)
    SAME_QK = "same_qk"  # the targets attend with the source's queries and keys, their own values
    VALUES = "values"  # A_edit V = A (P V) + A* (c V): value maps P and/or an own part c
    EXPLICIT = "explicit"  # probabilities computed (a store or a local blend reads them)

    def __init__(self, plan: EditPlan, cache, from_cache: bool, store, blend, latent_hw, n_uncond: int = 0):
        super().__init__(latent_hw)
        self.plan, self.cache, self.from_cache = plan, cache, from_cache
        self.store, self.blend, self.n_uncond = store, blend, n_uncond
        self._src = None  # the source's (q, k, mask) at the layer being computed
        self._routes = {}  # (layer name, step) -> (records, kind) or None; filled while sampling

    def needs_source(self, layer: LayerInfo, step: int) -> bool:
        """Does anything at this layer and step need the source's attention?"""
        if self.store is not None and self.store.wants(layer, step):
            return True
        if layer.is_cross:
            return self.plan.cross_active(step) or (self.blend is not None and self.blend.wants(layer, step))
        return self.plan.self_active(layer, step)

    def _records(self, layer) -> bool:
        return not self.from_cache and (self.cache.keeps(layer) or self.needs_source(layer, self.step))

    def _targets_need_probs(self, layer) -> bool:
        s = self.step
        if self.store is not None and self.store.wants(layer, s):
            return True
        return layer.is_cross and self.blend is not None and self.blend.wants(layer, s)

    def _route(self, layer):
        """(records the source?, kind) for this layer at this step, or None where nothing is
        wanted (the processor then attends as usual). Decided once per layer and step."""
        key = (layer.name, self.step)
        try:
            return self._routes[key]
        except KeyError:
            pass
        s, records = self.step, self._records(layer)
        if not (records or self.needs_source(layer, s)):
            route = None
        elif not self.fused or self._targets_need_probs(layer):
            route = (records, self.EXPLICIT)
        elif layer.is_cross and self.plan.cross_active(s):
            route = (records, self.SAME_QK if self.plan.copies_source(s) else self.VALUES)
        elif not layer.is_cross and self.plan.self_active(layer, s):
            route = (records, self.SAME_QK)
        else:
            route = (records, self.PLAIN)
        self._routes[key] = route
        return route

    def wants(self, layer):
        return self._route(layer) is not None

    def _source(self, layer, q, k, mask, u: int, records: bool):
        """The source's (q, k, mask) at this layer and step (row ``u``, or the cache)."""
        if self.from_cache:
            self._src = tuple(None if t is None else t.to(q.device) for t in self.cache.get(layer, self.step))
        else:
            self._src = (q[u:u + 1], k[u:u + 1], None if mask is None else mask[u:u + 1])
            if records:
                self.cache.put(layer, self.step, self._src)
        return self._src

    def attention_batch(self, layer, q, k, v, mask):
        """Every row of the batch (unconditional, then source?, targets) with fused attention, or
        None where the explicit probabilities are needed (the processor then calls ``attention``).

        The target rows of q, k (and v, for a value map) are overwritten in place with what the
        targets attend with, so the whole batch stays one fused call, with no copies of it; q, k,
        v are the processor's own projections, made for this call.
        """
        records, kind = self._route(layer)
        if kind is self.EXPLICIT:
            return None
        u = self.n_uncond
        qs, ks, ms = self._source(layer, q, k, mask, u, records)
        if kind is self.PLAIN:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        head = u if self.from_cache else u + 1  # rows attended as usual: unconditional, source
        own = None
        if kind is self.VALUES:
            P, c = self.plan.value_maps(self.step, v.device, v.dtype)
            vt = v[head:]
            if c is not None:  # the targets' own part, A* (c V), with their own queries and keys
                own = F.scaled_dot_product_attention(q[head:], k[head:], vt * c[:, None, :, None],
                                                     attn_mask=None if mask is None else mask[head:])
            if P is not None:
                vt.copy_(torch.einsum("tij,thjd->thid", P, vt))
        q[head:], k[head:] = qs, ks  # the targets attend with the source's queries and keys
        if mask is not None:
            mask = torch.cat([mask[:head], ms.expand(len(q) - head, *ms.shape[1:])])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if own is not None:
            out[head:] += own
        return out

    def attention(self, layer, q, k, v, mask):
        """Conditional rows (source?, targets) -> outputs (rows, heads, n_query, d), through the
        explicit probabilities (``attend``)."""
        self._source(layer, q, k, mask, 0, self._route(layer)[0])
        return attend_all(self, layer, q, k, v, mask)

    def attend(self, layer, probs):
        """probs (rows, heads, q, k) float32 -> the probabilities the rows attend with."""
        s = self.step
        if self.from_cache:
            src, tgt = attention_probs(*self._src)[0], probs
        else:
            src, tgt = probs[0], probs[1:]
        if layer.is_cross and self.plan.cross_active(s):
            tgt = self.plan.edit_cross(src, tgt, s)
        elif not layer.is_cross and self.plan.self_active(layer, s):
            tgt = src.expand_as(tgt)
        full = torch.cat([src[None], tgt])  # (1 + T, heads, q, k)
        if self.store is not None and self.store.wants(layer, s):
            self.store.add(layer, s, full)
        if self.blend is not None and self.blend.wants(layer, s):
            self.blend.add(layer, full)
        return tgt if self.from_cache else full
