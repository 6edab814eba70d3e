"""Prompt-to-Prompt end to end: the sampling driver, edits, cache, blends, schedulers, errors (issue 6)."""
import types

import numpy as np
import pytest
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       PNDMScheduler)
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from p2p_lab import ldm
from p2p_lab.p2p import (AttentionStore, LocalBlend, SourceCache, build_plan, edit, fixed_seed,
                         mask_blend, record_maps, token_indices)
from p2p_lab.p2p.controls import EditControl, EditPlan
from p2p_lab.unet_attention import AttentionHook, LayerInfo

S = "a red circle on a blue background"
T1 = "a green circle on a blue background"
T2 = "a red square on a blue background"
FAST = dict(num_inference_steps=4, guidance_scale=5.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def close(a, b, atol=1e-5):
    return np.abs(np.asarray(a) - np.asarray(b)).max() <= atol


@pytest.mark.parametrize("name,g", [("shipped_pipe", 5.0), ("sd_like_pipe", 3.0), ("shipped_pipe", 1.0)])
def test_our_loop_equals_the_diffusers_pipeline(name, g, request):
    pipe = request.getfixturevalue(name)
    s = pipe.unet.config.sample_size
    z = torch.randn(2, 4, s, s, generator=torch.Generator().manual_seed(1))
    ref = pipe([S, T1], latents=z, num_inference_steps=3, guidance_scale=g, output_type="np").images
    ours = ldm.sample(pipe, [S, T1], None, 3, g, latents=z).numpy()
    assert ours.shape == ref.shape and close(ours, ref, 1e-4)


def test_tau_zero_is_the_fixed_seed_baseline(shipped_pipe):
    res = edit(shipped_pipe, S, [T1, T2], cross_tau=0.0, self_tau=0.0, context_tau=0.0, **FAST)
    base = fixed_seed(shipped_pipe, S, [T1, T2], **FAST)
    assert res.images.shape == (3, 32, 32, 3) and res.images.dtype == np.float32
    assert close(res.images, base)
    assert close(res.source_image, fixed_seed(shipped_pipe, S, **FAST)[0])  # the source is never edited
    assert all(isinstance(p, AttnProcessor2_0) for p in shipped_pipe.unet.attn_processors.values())


def _encode(pipe, prompts):
    tok = pipe.tokenizer
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def test_context_embeddings_by_hand(shipped_pipe):
    from p2p_lab.p2p.edit import context_embeddings

    inserted = "a big red circle on a blue background"  # every source token moves one place right
    with torch.no_grad():
        got = context_embeddings(shipped_pipe, S, [T2, inserted])
    src, t2, ins = _encode(shipped_pipe, [S, T2, inserted])
    assert torch.equal(got[0], src)
    # "a red square ...": token 3 ("square") is the target's own, every other position the source's
    assert torch.allclose(got[1, 3], t2[3]) and not torch.allclose(got[1, 3], src[3], atol=1e-3)
    keep = [i for i in range(16) if i != 3]
    assert torch.allclose(got[1, keep], src[keep])
    # phrase insertion: "big" (position 2) is new, the rest are the source's tokens one place on
    assert torch.allclose(got[2, 2], ins[2])
    assert torch.allclose(got[2, :2], src[:2]) and torch.allclose(got[2, 3:], src[2:15])


def test_context_tau_feeds_the_kept_embeddings_to_the_unet(shipped_pipe):
    """With no attention edit, context_tau=1 is plain sampling (diffusers' own pipeline) from the
    kept embeddings; context_tau=0 from the target's own."""
    from p2p_lab.p2p.edit import context_embeddings

    with torch.no_grad():
        ctx = context_embeddings(shipped_pipe, S, [T2])
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).repeat(2, 1, 1, 1)
    uncond = _encode(shipped_pipe, ["", ""])
    ref = shipped_pipe(prompt_embeds=ctx, negative_prompt_embeds=uncond, latents=z, output_type="np",
                       **FAST).images
    got = edit(shipped_pipe, S, T2, cross_tau=0.0, self_tau=0.0, context_tau=1.0, **FAST).images
    assert close(got, ref, 1e-4)
    own = edit(shipped_pipe, S, T2, cross_tau=0.0, self_tau=0.0, context_tau=0.0, **FAST).images
    assert not close(own[1], ref[1], 1e-3) and close(own[0], ref[0], 1e-4)
    half = edit(shipped_pipe, S, T2, cross_tau=0.0, self_tau=0.0, context_tau=0.5, **FAST).images
    assert not close(half[1], ref[1], 1e-3) and not close(half[1], own[1], 1e-3)
    with pytest.raises(ValueError, match="context_tau = 1.5 is outside"):
        edit(shipped_pipe, S, T2, context_tau=1.5)


def test_the_defaults_are_the_papers_and_context_tau_is_opt_in(shipped_pipe):
    """Every model edits with the paper's method unless asked: the target's own text embeddings
    throughout (context_tau 0), cross tau 0.8 and self tau 0.4 (the official implementation's)."""
    from p2p_lab.p2p.options import EditOptions

    o = EditOptions()
    assert (o.context_tau, o.cross_tau, o.self_tau) == (0.0, 0.8, 0.4)
    assert close(edit(shipped_pipe, S, T2, **FAST).images, edit(shipped_pipe, S, T2, context_tau=0.0, **FAST).images)
    assert not close(edit(shipped_pipe, S, T2, **FAST).images, edit(shipped_pipe, S, T2, context_tau=1.0, **FAST).images, 1e-3)


def _manual_attention(attn, x, ctx):
    """Per-head probabilities and values by hand: A (b, h, n, m), V (b, h, m, d)."""
    h = attn.heads
    q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
    split = lambda t: t.view(t.shape[0], t.shape[1], h, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    A = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return A, v


def _out(attn, A, v):
    o = (A @ v).transpose(1, 2).flatten(2)  # (b, n, h*d)
    return attn.to_out[0](o)


def test_cross_attention_edit_math(shipped_pipe):
    """Target row: alpha * ((A M) * w) + (1 - alpha) * A*, then times the target's values."""
    tok = shipped_pipe.tokenizer
    src, tgt = "a red circle", "a turquoise circle"
    plan = build_plan(tok, src, [tgt], mode="replace", cross_tau={"turquoise": 0.0, "default_": 1.0},
                      self_tau=0.0, reweight={"circle": -0.5}, mapper="average", num_steps=2,
                      self_max_res=16)
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=2, dim_head=8)
    x, ctx = torch.randn(2, 16, 32), torch.randn(2, 16, 24)
    cache = SourceCache(None, [], 16, record_all=False)
    ctrl = EditControl(plan, cache, False, None, None, (4, 4), 0)
    attn.set_processor(AttentionHook(LayerInfo("x", "down", 2, True), ctrl))
    with torch.no_grad():
        out = attn(x, ctx)
        A, v = _manual_attention(attn, x, ctx)
        M = torch.zeros(16, 16)  # by hand: red (2) -> turquoise (2, 3) halves; circle 3 -> 4; rest in order
        M[0, 0] = M[1, 1] = M[3, 4] = 1
        M[2, 2] = M[2, 3] = 0.5
        for j in range(5, 16):
            M[j - 1, j] = 1
        w = torch.ones(16)
        w[4] = -0.5
        alpha = torch.ones(16)
        alpha[[2, 3]] = 0
        edited = alpha * ((A[0] @ M) * w) + (1 - alpha) * A[1]
        assert torch.allclose(out[1], _out(attn, edited[None], v[1:])[0], atol=1e-5)
        assert torch.allclose(out[0], _out(attn, A[:1], v[:1])[0], atol=1e-5)  # source untouched
        assert ("x", 0) in cache.qk


def test_self_attention_edit_uses_the_source_probabilities(shipped_pipe):
    plan = build_plan(shipped_pipe.tokenizer, S, [T1], mode=None, cross_tau=0.0, self_tau=1.0,
                      reweight=None, mapper="copy", num_steps=1, self_max_res=16)
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=8)
    x = torch.randn(2, 16, 32)
    ctrl = EditControl(plan, SourceCache(None, [], 16, False), False, None, None, (4, 4), 0)
    attn.set_processor(AttentionHook(LayerInfo("s", "up", 2, False), ctrl))
    with torch.no_grad():
        out = attn(x)
        A, v = _manual_attention(attn, x, x)
        assert torch.allclose(out[1], _out(attn, A[:1], v[1:])[0], atol=1e-5)


@pytest.mark.parametrize("cls", [DDIMScheduler, PNDMScheduler, EulerDiscreteScheduler,
                                 DPMSolverMultistepScheduler])
def test_tau_follows_the_loop_step_for_every_scheduler(cls, shipped_pipe, monkeypatch):
    seen = []
    original = EditPlan.edit_cross

    def spy(self, src, tgt, step):
        seen.append(step)
        return original(self, src, tgt, step)

    monkeypatch.setattr(EditPlan, "edit_cross", spy)
    monkeypatch.setattr(EditPlan, "copies_source", lambda self, step: False)  # the general path, spied
    monkeypatch.setattr(EditControl, "fused", False)  # explicit probabilities everywhere
    old = shipped_pipe.scheduler
    shipped_pipe.scheduler = cls.from_config(old.config)
    try:
        sch = cls.from_config(old.config)
        sch.set_timesteps(4)
        n = len(sch.timesteps)
        store = AttentionStore(resolutions=(4,))
        res = edit(shipped_pipe, S, T1, cross_tau=0.5, self_tau=0.0, store=store, **FAST)
    finally:
        shipped_pipe.scheduler = old
    n_cross = sum(l.is_cross for l in store.layers)
    assert sorted(set(seen)) == list(range(n // 2))  # the first half of the loop, whatever the scheduler
    assert len(seen) == (n // 2) * 7  # 7 cross-attention layers in the shipped UNet, once per step
    assert sorted({k[1] for k in store.sums}) == list(range(n)) and set(store.counts.values()) == {1}
    assert n_cross == 4 and np.isfinite(res.images).all()  # 4x4: down 1, mid, up 0 (two)


def test_copying_the_source_maps_takes_the_shortcut(shipped_pipe, monkeypatch):
    """A one-to-one swap with one tau: where alpha is 1, A_edit = A (the source's maps), so the
    targets attend with the source's queries and keys and their own values, with no value map
    (P = I) and no own part (c = 0); the result equals the general value map's."""
    plan = build_plan(shipped_pipe.tokenizer, S, [T1], mode=None, cross_tau=0.5, self_tau=0.0,
                      reweight=None, mapper="copy", num_steps=4, self_max_res=16)
    assert [plan.copies_source(i) for i in range(4)] == [True, True, False, False]
    for opts, want in ((dict(reweight={"green": 2.0}), [False] * 4),  # a column scaled: not a copy
                       (dict(cross_tau={"default_": 0.5, "green": 0.25}), [True, False, False, False])):
        other = build_plan(shipped_pipe.tokenizer, S, [T1], mode=None, self_tau=0.0, mapper="copy",
                           num_steps=4, self_max_res=16, **{"cross_tau": 0.5, "reweight": None, **opts})
        assert [other.copies_source(i) for i in range(4)] == want, opts
    fast = edit(shipped_pipe, S, [T1, T2], cross_tau=0.5, **FAST)
    monkeypatch.setattr(EditPlan, "copies_source", lambda self, step: False)
    general = edit(shipped_pipe, S, [T1, T2], cross_tau=0.5, **FAST)
    assert close(fast.images, general.images)


@pytest.mark.parametrize("name", ["shipped_pipe", "sd_like_pipe"])
def test_fused_attention_equals_the_explicit_probabilities(name, request, monkeypatch):
    """Every edit computed on the values with fused attention (no probabilities) gives what the
    explicit probabilities give: replace (one token -> two, averaged), refine, a negative
    reweight, per-word tau, a self-attention window, context tau; fresh and from the cache."""
    pipe = request.getfixturevalue(name)
    targets = [T1, "a red turquoise circle on a blue background", "a red big square on a blue background"]
    opts = dict(cross_tau={"default_": 0.75, "green": (0.25, 0.5)}, self_tau=(0.0, 0.5),
                reweight={"circle": -0.5, "square": 2.0}, mapper="average", context_tau=0.25,
                num_inference_steps=4, guidance_scale=5.0)
    replace = dict(opts, mode="replace", cross_tau={"default_": 0.75, "turquoise": (0.25, 0.5)},
                   reweight={"turquoise": -0.5})
    runs = {}
    for fused in (True, False):
        monkeypatch.setattr(EditControl, "fused", fused)
        first = edit(pipe, S, targets, **opts)  # refine for the two longer targets
        swap = edit(pipe, S, ["a turquoise circle on a blue background"], **replace)
        rerun = edit(pipe, S, targets, cache=first.cache, **dict(opts, cross_tau=0.5))
        assert rerun.from_cache and rerun.cache.resumed_at is None  # a full target run, from the cache
        runs[fused] = (first.images, swap.images, rerun.images)
    for a, b in zip(runs[True], runs[False]):
        assert close(a, b, 1e-4)
    assert not close(runs[True][0][1], runs[True][0][0], 1e-2)  # the edits did something


@pytest.mark.parametrize("dtype,mean_tol,max_tol", [(torch.bfloat16, 0.01, 0.15), (torch.float16, 0.005, 0.05)])
def test_low_precision_edit_follows_float32(dtype, mean_tol, max_tol):
    """bfloat16 and float16 weights and activations (the fused edit in low precision, as fp16 on a
    GPU; float16 has 3 more mantissa bits than bfloat16): the edit runs, stays finite and close to
    float32, and a store still gets float32 maps."""
    from p2p_lab.testing import sd_like_pipeline

    pipe = sd_like_pipeline(latent_size=8)
    targets = ["a red big circle on a blue background", T2]
    opts = dict(reweight={"big": 2.0}, num_inference_steps=3, guidance_scale=5.0)
    ref = edit(pipe, S, targets, **opts)
    pipe.to(dtype)
    store = AttentionStore(resolutions=(8,))
    low = edit(pipe, S, targets, store=store, **opts)
    again = edit(pipe, S, targets, cache=low.cache, **dict(opts, cross_tau=0.5))
    assert again.from_cache and np.isfinite(low.images).all() and np.isfinite(again.images).all()
    err = np.abs(low.images - ref.images)
    assert err.mean() < mean_tol and err.max() < max_tol, (err.mean(), err.max())
    assert store.maps(0).dtype == torch.float32


def test_cached_rerun_equals_full_run(shipped_pipe):
    first = edit(shipped_pipe, S, T1, **FAST)
    assert not first.from_cache and first.cache.nbytes > 0
    opts = dict(cross_tau={"square": (0.0, 0.5), "default_": 0.75}, self_tau=(0.25, 0.5),
                reweight={"square": 1.5}, local_blend=LocalBlend(["circle", "square"], start=0.0), **FAST)
    store_c, store_f = AttentionStore(), AttentionStore()
    cached = edit(shipped_pipe, S, [T2, T1], cache=first.cache, store=store_c, **opts)
    full = edit(shipped_pipe, S, [T2, T1], store=store_f, **opts)
    assert cached.from_cache and not full.from_cache
    assert close(cached.images, full.images)
    assert torch.allclose(store_c.maps(1), store_f.maps(1), atol=1e-5)
    with pytest.raises(ValueError, match="seed"):
        edit(shipped_pipe, S, T1, cache=first.cache, seed=1, **FAST)


@pytest.mark.parametrize("views", [True, False])
def test_cache_as_views_or_copies(views, shipped_pipe, monkeypatch):
    """The source's q/k rows are kept as views of their batch when every batch fits the budget,
    else copied; either way they stay the source's (the fused edit overwrites the targets' rows of
    the same batch in place) and a cached re-run equals a full one. nbytes counts what is held."""
    import sys

    edit_module = sys.modules["p2p_lab.p2p.edit"]
    one = edit_module._record_all_nbytes(shipped_pipe, edit_module.attention_layers(shipped_pipe), 16, 4)
    batch = 2 * 3  # guidance: (source + 2 targets) twice
    monkeypatch.setattr(edit_module, "CACHE_BUDGET_BYTES", batch * one if views else batch * one - 1)
    targets = [T1, T2]
    first = edit(shipped_pipe, S, targets, **FAST)
    assert first.cache.views is views and first.cache.record_all
    q, k, _ = first.cache.get(first.cache.layers[0], 0)
    assert (q.untyped_storage().nbytes() > q.numel() * q.element_size()) is views
    qk = sum(t.numel() * t.element_size() for v in first.cache.qk.values() for t in v if t is not None)
    assert (first.cache.nbytes > 2 * qk) is views  # a view holds its whole batch
    opts = dict(cross_tau=0.5, self_tau=0.25, reweight={"square": 2.0}, **FAST)
    cached = edit(shipped_pipe, S, targets, cache=first.cache, **opts)
    monkeypatch.setattr(edit_module, "CACHE_BUDGET_BYTES", 0)  # no cache: the reference
    full = edit(shipped_pipe, S, targets, **opts)
    assert cached.from_cache and not full.from_cache and not full.cache.record_all
    assert close(cached.images, full.images)


def test_live_caches_share_one_budget(shipped_pipe, monkeypatch):
    """With room for about two caches, a third edit empties the least recently used one (not the
    one just reused); every live cache's bytes, counted from its tensors, stay within the budget;
    an emptied cache still serves: the next edit with it re-runs the source and equals an edit
    that never cached (tensors compared)."""
    import gc
    import sys

    cache_module = sys.modules["p2p_lab.p2p.cache"]
    gc.collect()  # caches of earlier tests whose results are gone leave the pool
    pool = lambda: [c for c in list(cache_module._LIVE) if c.held]  # noqa: E731
    for c in pool():  # older tests' caches: not this test's business
        c.held = 0
    a = edit(shipped_pipe, S, T1, seed=0, **FAST)
    one = a.cache.nbytes
    assert one > 0 and a.cache.held == one
    monkeypatch.setattr(cache_module, "CACHE_TOTAL_BYTES", int(2.5 * one))
    b = edit(shipped_pipe, S, T1, seed=1, **FAST)
    assert a.cache.qk and b.cache.qk  # two fit
    again = edit(shipped_pipe, S, T2, cache=a.cache, **FAST)  # a is now the more recently used
    assert again.from_cache
    c = edit(shipped_pipe, S, T1, seed=2, **FAST)
    assert not b.cache.qk and b.cache.image is None and b.cache.evictions == 1  # the oldest gave way
    assert a.cache.qk and c.cache.qk and a.cache.evictions == 0
    held = sum(t.untyped_storage().nbytes() for x in (a, b, c) for v in x.cache.qk.values() for t in v if t is not None)
    assert held <= cache_module.CACHE_TOTAL_BYTES
    rerun = edit(shipped_pipe, S, T2, cache=b.cache, seed=1, **FAST)  # the emptied cache: source re-run
    assert not rerun.from_cache and rerun.cache is b.cache and b.cache.qk
    assert not a.cache.qk or not c.cache.qk  # and it made room in turn
    reference = edit(shipped_pipe, S, T2, seed=1, **FAST)
    assert close(rerun.images, reference.images)
    with pytest.raises(ValueError, match="seed"):  # an emptied cache still belongs to its source run
        edit(shipped_pipe, S, T2, cache=b.cache, seed=0, **FAST)


def test_tau_rerun_resumes_from_the_first_changed_step(shipped_pipe):
    kw = dict(num_inference_steps=10, guidance_scale=4.0)
    first = edit(shipped_pipe, S, T2, cross_tau=0.8, self_tau=0.4, context_tau=0.0, **kw)
    cache = first.cache
    assert cache.resumed_at is None  # a full run
    cases = [  # (options, the loop step the re-run must resume at)
        (dict(cross_tau=0.5, self_tau=0.4), 5),  # alpha first differs at step 5
        (dict(cross_tau=0.5, self_tau=0.2), 2),  # the self-attention window ends at step 2 now
        (dict(cross_tau=0.5, self_tau=0.2), 10),  # nothing new: the trail's final latent
        (dict(cross_tau=0.5, self_tau=0.2, context_tau=0.5), None),  # a context window from step 0
        (dict(cross_tau=0.5, self_tau=0.2, context_tau=0.3), 3),  # the context window ends earlier
        (dict(cross_tau=0.5, self_tau=0.2, reweight={"square": 2.0}), None),  # another A_hat: all
    ]
    for opts, _ in cases:
        opts.setdefault("context_tau", 0.0)
    for opts, at in cases:
        got = edit(shipped_pipe, S, T2, cache=cache, **opts, **kw)
        assert got.from_cache and cache.resumed_at == at, (opts, cache.resumed_at)
        assert close(got.images, edit(shipped_pipe, S, T2, **opts, **kw).images)
    other = edit(shipped_pipe, S, T1, cache=cache, cross_tau=0.5, self_tau=0.2, **kw)  # another target
    assert cache.resumed_at is None and close(other.images, edit(shipped_pipe, S, T1, cross_tau=0.5, self_tau=0.2, **kw).images)


def test_no_resume_under_a_multistep_scheduler(shipped_pipe):
    from diffusers import DPMSolverMultistepScheduler

    original = shipped_pipe.scheduler
    shipped_pipe.scheduler = DPMSolverMultistepScheduler.from_config(original.config)
    try:
        first = edit(shipped_pipe, S, T2, cross_tau=0.8, **FAST)
        again = edit(shipped_pipe, S, T2, cross_tau=0.5, cache=first.cache, **FAST)
        assert again.from_cache and first.cache.resumed_at is None
        assert close(again.images, edit(shipped_pipe, S, T2, cross_tau=0.5, **FAST).images, 1e-4)
    finally:
        shipped_pipe.scheduler = original


def test_local_blend_extremes(shipped_pipe):
    kw = dict(cross_tau=0.5, self_tau=0.25, **FAST)
    plain = edit(shipped_pipe, S, T2, **kw)
    everywhere = edit(shipped_pipe, S, T2, local_blend=LocalBlend(["circle", "square"], threshold=0.0,
                                                                  start=0.0, dilate=0), **kw)
    nowhere = edit(shipped_pipe, S, T2, local_blend=LocalBlend(["square"], threshold=1.0, start=0.0), **kw)
    assert close(everywhere.images, plain.images)  # the mask covers the whole latent
    assert close(nowhere.images[1], nowhere.images[0])  # an empty mask keeps the source
    # the result carries the last step's mask on the latent grid: all, none
    h, w = (s // 4 for s in plain.images.shape[1:3])  # the shipped model's latents: a quarter of the image
    assert plain.blend_mask is None
    assert everywhere.blend_mask.shape == (1, h, w) and everywhere.blend_mask.dtype == bool and everywhere.blend_mask.all()
    assert not nowhere.blend_mask.any()


def test_mask_blend_extremes(shipped_pipe):
    base = fixed_seed(shipped_pipe, S, T2, **FAST)
    full = mask_blend(shipped_pipe, S, T2, np.ones((32, 32), bool), **FAST)
    empty = mask_blend(shipped_pipe, S, T2, np.zeros((32, 32), bool), **FAST)
    assert close(full, base) and close(empty[1], empty[0])


def test_sd_topology_edits_with_77_tokens(sd_like_pipe):
    store = AttentionStore(resolutions=(8,))
    res = edit(sd_like_pipe, "a red circle", ["a big turquoise circle", "a red circle on a blue background"],
               mode=None, local_blend=["circle"], reweight={"blue": 2.0, "big": -1.0}, store=store,
               num_inference_steps=3, guidance_scale=4.0)  # refine (insertion) + reweight, chained
    assert res.images.shape == (3, 128, 128, 3)
    src_maps, maps = store.maps(0), store.maps(1)  # the source's maps are unedited probabilities
    assert maps.shape == (8, 8, 77) and torch.allclose(src_maps.sum(-1), torch.ones(()), atol=1e-5)
    idx = token_indices(sd_like_pipe.tokenizer, "a big turquoise circle", "turquoise")
    wm = store.word_map(sd_like_pipe.tokenizer, "a big turquoise circle", "turquoise", prompt_index=1)
    assert torch.allclose(wm, maps[..., idx].sum(-1))
    assert store.nbytes == AttentionStore.estimate_nbytes(store.layers, 77, 3, 3, resolutions=(8,))


def test_misuse_errors(shipped_pipe):
    with pytest.raises(TypeError, match="cros_tau.*did you mean 'cross_tau'"):
        edit(shipped_pipe, S, T1, cros_tau=0.5)
    with pytest.raises(ValueError, match="outside"):
        edit(shipped_pipe, S, T1, cross_tau=1.2)
    with pytest.raises(ValueError, match="outside"):
        edit(shipped_pipe, S, T1, self_tau=-0.1)
    with pytest.raises(ValueError, match="not in the prompt"):
        edit(shipped_pipe, S, T1, cross_tau={"purple": 0.3})
    with pytest.raises(ValueError, match="not in the prompt"):
        edit(shipped_pipe, S, T1, cross_tau={"default_": 0.8, "triangle": 0.3})
    with pytest.raises(ValueError, match="none of the target prompts"):
        edit(shipped_pipe, S, T1, reweight={"triangle": 2.0})
    with pytest.raises(ValueError, match="none of the prompts"):
        edit(shipped_pipe, S, T1, local_blend=["triangle"])
    with pytest.raises(ValueError, match="use mode='refine'"):
        edit(shipped_pipe, "a circle on a blue background", T1, mode="replace")  # an insertion
    with pytest.raises(ValueError, match="this tokenizer holds 16"):
        edit(shipped_pipe, S, S + " and a big red square on a green background")
    with pytest.raises(ValueError, match="mode 'swap' is unknown"):
        edit(shipped_pipe, S, T1, mode="swap")
    with pytest.raises(TypeError, match="no option 'steps'"):
        record_maps(shipped_pipe, [S], AttentionStore(), steps=3)
    from diffusers import UNet2DModel  # self-attention only: nothing for a prompt to edit

    unet = UNet2DModel(sample_size=8, block_out_channels=(16, 16), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    fake = types.SimpleNamespace(unet=unet, tokenizer=shipped_pipe.tokenizer)
    with pytest.raises(ValueError, match="no cross-attention"):
        edit(fake, S, T1)


def test_the_engine_refuses_what_it_would_ignore(shipped_pipe):
    """Options an edit would not read, and targets that are no prompts, are errors naming the fix
    (issue 23); all raised before any sampling."""
    insert = "a big red circle on a blue background"  # 8 words against the source's 7: refine
    with pytest.raises(ValueError, match=r"mapper='average' has no effect on a refine edit \(.* has 7 words, "
                                         r".* has 8.*drop mapper="):
        edit(shipped_pipe, S, insert, mapper="average", **FAST)
    with pytest.raises(ValueError, match="mapper='copy' has no effect on a refine edit"):
        edit(shipped_pipe, S, T1, mode="refine", mapper="copy", **FAST)  # refine asked: no mapper either
    for bad in (5, [T1, 3], None, [], (T1, b"x")):
        with pytest.raises(TypeError, match="targets must be a string or a non-empty list of strings"):
            edit(shipped_pipe, S, bad, **FAST)
    for bad in ("", [T1, "   "]):
        with pytest.raises(ValueError, match="targets holds the empty prompt .*give it some words"):
            edit(shipped_pipe, S, bad, **FAST)
    for bad in ("", 3):
        with pytest.raises(ValueError, match="source must be a non-empty prompt string"):
            edit(shipped_pipe, bad, T1, **FAST)


def test_options_record_is_the_keywords(shipped_pipe):
    """``options=EditOptions(...)`` is the same edit as the keywords; keywords replace its fields;
    it is frozen and keeps its own copy of a dict; an unknown keyword names every valid one."""
    import dataclasses

    from p2p_lab.p2p import EditOptions

    tau = {"default_": 0.6, "green": 0.2}
    opts = EditOptions(cross_tau=tau, self_tau=0.2, **FAST)
    tau["green"] = 1.0  # the record keeps what it was given
    assert opts.cross_tau == {"default_": 0.6, "green": 0.2}
    by_kw = edit(shipped_pipe, S, T1, cross_tau={"default_": 0.6, "green": 0.2}, self_tau=0.2, **FAST).images
    assert close(edit(shipped_pipe, S, T1, options=opts).images, by_kw, 0)
    assert close(edit(shipped_pipe, S, T1, options=dataclasses.replace(opts, self_tau=0.9), self_tau=0.2).images,
                 by_kw, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.seed = 3
    with pytest.raises(TypeError, match="options must be an EditOptions"):
        edit(shipped_pipe, S, T1, options={"cross_tau": 0.5})
    with pytest.raises(TypeError, match=r"no option 'inversions' \(did you mean 'inversion'\?\); valid options: "
                                        r"mode, cross_tau, .*, progress, options, cache, store, inversion"):
        edit(shipped_pipe, S, T1, inversions=None)
    with pytest.raises(ValueError, match="mapper 'median' is unknown"):
        EditOptions(mapper="median")


def test_cli_writes_a_grid(shipped_pipe, tmp_path):
    from PIL import Image

    from p2p_lab.__main__ import main

    out = tmp_path / "grid.png"
    assert main(["edit", S, T1, T2, "--steps", "2", "--cross-tau", '{"green": 0.5, "default_": 0.8}',
                 "--reweight", "green=2", "--out", str(out), "--device", "cpu"]) == 0
    assert Image.open(out).size == (3 * 32 + 4, 32)


def test_edit_without_guidance(shipped_pipe):
    """guidance_scale 1: no unconditional branch at all, and the edit still runs."""
    kw = dict(num_inference_steps=3, guidance_scale=1.0)
    res = edit(shipped_pipe, S, T2, **kw)
    assert close(res.source_image, fixed_seed(shipped_pipe, S, **kw)[0])
    again = edit(shipped_pipe, S, T2, cross_tau=0.3, cache=res.cache, **kw)
    assert again.from_cache and close(again.images, edit(shipped_pipe, S, T2, cross_tau=0.3, **kw).images)


def test_reweight_per_target_equals_one_edit_per_scale(shipped_pipe):
    scales = [0.0, 2.0]
    batch = edit(shipped_pipe, S, [S, S], reweight=[{"blue": c} for c in scales], **FAST)
    for k, c in enumerate(scales):
        one = edit(shipped_pipe, S, S, reweight={"blue": c}, **FAST)
        assert close(batch.images[k + 1], one.images[1], 1e-4)
    with pytest.raises(ValueError, match="one dict per target"):
        edit(shipped_pipe, S, [S, S], reweight=[{"blue": 0.0}], **FAST)


def test_reweight_response_measures_each_scale_against_the_unedited_picture(shipped_pipe):
    """reweight_response's changes are the measures (metrics.object_measures) of separate edits, one
    scale each, minus the measure of the plain sample of the prompt (scale 1 leaves it unedited)."""
    from p2p_lab.metrics import object_measures
    from p2p_lab.p2p import reweight_response

    from p2p_lab.model import sampling_defaults

    prompt, steps, w = "a big red circle on a blue background", 4, sampling_defaults(shipped_pipe).guidance_scale
    got = reweight_response(shipped_pipe, prompt, {"blue": "bg_hue", "circle": "area"}, (0.0, 1.0, 3.0),
                            seeds=(0, 1), num_inference_steps=steps)
    for word, what in (("blue", "bg_hue"), ("circle", "area")):
        want = []
        for c in (0.0, 1.0, 3.0):
            per_seed = []
            for seed in (0, 1):
                plain = ldm.sample(shipped_pipe, prompt, seed, steps, w).numpy()[0]
                one = edit(shipped_pipe, prompt, prompt, reweight={word: c}, seed=seed,
                           num_inference_steps=steps).target_images[0]
                d = object_measures(one)[what] - object_measures(plain)[what]
                per_seed.append((d + 180) % 360 - 180 if what == "bg_hue" else d)
            want.append(np.mean(per_seed))
        assert np.allclose(got[word], want, atol=0.5), (word, got[word], want)
        assert got[word][1] == 0.0
    assert abs(got["blue"][0]) > 5  # the background word's column gone: the hue moves
    # a re-weighting scales the source's maps, so with cross_tau = 0 (never the source's) it does nothing
    off = reweight_response(shipped_pipe, prompt, {"blue": "bg_hue"}, (0.0, 1.0, 3.0), seeds=(0,),
                            num_inference_steps=steps, cross_tau=0.0)
    assert np.abs(off["blue"]).max() < 0.01, off
    with pytest.raises(ValueError, match="put 1.0 in the scales"):
        reweight_response(shipped_pipe, prompt, {"blue": "bg_hue"}, (0.0, 2.0))
