"""Public checks for notebook 05 (Prompt-to-Prompt): the graded pieces of the algorithm.

* ``check_edit_switch``: Algorithm 1's switch Edit(A_t, A*_t, t) = A*_t if t < tau else A_t;
* ``check_replace_mapper``: the word-alignment trick A_hat = A M;
* ``check_alpha_blend``: per-word, per-step blending alpha_t (.) A_hat + (1 - alpha_t) (.) A*_t;
* ``check_reweight``: re-weighting, the columns of the chosen tokens scaled by c.
* ``check_edit_processor``: the editing attention processor, alpha (.) (A M) + (1 - alpha) (.) A* on
  the targets' conditional rows (``run_edit_processor`` samples a word swap with it);
* ``check_map_recorder``, ``check_build_mapper``, ``check_alignment_table``, ``check_blend_mask``: the
  recording processor, the mapper, Needleman-Wunsch's table and the local blend's mask;
* ``check_local_blender``: the local blend across sampling steps, maps collected from the layers of
  a step, the latents blended after it (``run_local_blender`` samples an edit with it).

The trusted references are the engine's own equations (:mod:`p2p_lab.p2p.equations`, written from
the paper's formulas, Hertz et al. 2022, Sec. 3.2), which the engine applies inside the UNet's
attention layers.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ..p2p.blend import LocalBlend
from ..p2p.equations import alpha_blend, apply_mapper, edit_switch, token_weights
from ..p2p.equations import reweight as _reweight
from ._core import CheckResult, Mistake, answer, check_pipeline, run_check

__all__ = ["check_edit_switch", "check_replace_mapper", "check_alpha_blend", "check_reweight",
           "check_build_mapper", "check_alignment_table", "check_blend_mask", "check_map_recorder",
           "check_edit_processor", "run_edit_processor", "check_local_blender", "run_local_blender",
           "edit_switch", "apply_mapper", "alpha_blend", "reweight", "run_edit_switch"]

# The package's own implementations of what notebook 05 asks, per exercise: blocked while a
# student's function runs, in the public checks and in the grader's hidden tests.
_EQ = "p2p_lab.p2p.equations."
FORBIDDEN = {
    "edit_switch": (_EQ + "edit_switch",),
    "apply_mapper": (_EQ + "apply_mapper", _EQ + "edited_maps"),
    "alpha_blend": (_EQ + "alpha_blend", _EQ + "edited_maps"),
    "reweight_attention": (_EQ + "reweight", _EQ + "edited_maps"),
    "build_mapper": ("p2p_lab.p2p.align.replace_mapper", "p2p_lab.p2p.controls.build_plan"),
    "alignment_table": ("p2p_lab.p2p.align.alignment_table", "p2p_lab.p2p.align.global_alignment",
                        "p2p_lab.p2p.align.refine_mapper"),
    "blend_mask": ("p2p_lab.p2p.blend.word_mask", "p2p_lab.p2p.blend.BlendState.mask"),
    "LocalBlender": ("p2p_lab.p2p.blend.word_mask", "p2p_lab.p2p.blend.BlendState.mask",
                     "p2p_lab.p2p.blend.BlendState.add", "p2p_lab.p2p.blend.BlendState.apply"),
    "MapRecorder": ("p2p_lab.unet_attention.attention_probs", "p2p_lab.unet_attention.attend_all",
                    "p2p_lab.attention.record_cross_attention", "p2p_lab.p2p.record_maps"),
    "EditProcessor": (_EQ + "edited_maps", _EQ + "value_maps", _EQ + "fused_edit", "p2p_lab.unet_attention.attention_probs",
                      "p2p_lab.unet_attention.attend_all", "p2p_lab.p2p.controls.EditPlan.edit_cross"),
}



# ------------------------------------------------------------------ references: the engine's own equations

@answer
def reweight(A: torch.Tensor, token_indices: list[int], scale: float) -> torch.Tensor:
    """Attention re-weighting as the exercise asks it: the columns ``token_indices`` times c."""
    return _reweight(A, token_weights(A.shape[-1], token_indices, scale, A.dtype))


# ------------------------------------------------------------------ seeded inputs

def _maps(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Random attention probabilities (rows sum to 1 over the last axis)."""
    return torch.randn(*shape, generator=gen, dtype=torch.float64).mul(2).softmax(-1)


def _copy_mapper(n: int, src_of: dict[int, list[int]]) -> torch.Tensor:
    """M with M[i, j] = 1 where target token j takes source token i (identity elsewhere)."""
    M = torch.zeros(n, n, dtype=torch.float64)
    taken = {j for js in src_of.values() for j in js}
    for i, js in src_of.items():
        M[i, js] = 1.0
    rest_src = [i for i in range(n) if i not in src_of]
    rest_tgt = [j for j in range(n) if j not in taken]
    for i, j in zip(rest_src, rest_tgt):
        M[i, j] = 1.0
    return M


# ------------------------------------------------------------------ the Edit switch

def _run_switch(fn: Callable, A_t, A_star_t, timesteps, tau):
    outs = []
    for t in timesteps:
        out = fn(A_t.clone(), A_star_t.clone(), int(t), int(tau))
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"Edit must return one of the two attention tensors, got "
                            f"{type(out).__name__} at t={int(t)}")
        outs.append(out)
    return torch.stack(outs)  # (n_steps, heads, n_pixels, n_tokens)


def _switch_cases():
    gen = torch.Generator().manual_seed(5)
    steps = torch.arange(981, 0, -40)  # a 25-step DDIM schedule, t counting down
    return [dict(A_t=_maps(gen, 2, 16, 8), A_star_t=_maps(gen, 2, 16, 8), timesteps=steps,
                 tau=int(steps[k])) for k in (10, 4, 19)]


def check_edit_switch(fn: Callable) -> CheckResult:
    """Check ``fn(A_t, A_star_t, t, tau)`` = Edit(A_t, A*_t, t) over a whole schedule of t."""
    student = lambda A_t, A_star_t, timesteps, tau: _run_switch(fn, A_t, A_star_t, timesteps, tau)  # noqa: E731
    ref = lambda A_t, A_star_t, timesteps, tau: _run_switch(edit_switch, A_t, A_star_t, timesteps, tau)  # noqa: E731

    @answer
    def wrong(rule):
        return lambda A_t, A_star_t, timesteps, tau: torch.stack(
            [A_star_t if rule(int(t), tau) else A_t for t in timesteps])

    mistakes = (
        Mistake("always_target", wrong(lambda t, tau: True),
                "you always return A*_t: the source's maps A_t must be used while t >= tau"),
        Mistake("always_source", wrong(lambda t, tau: False),
                "you always return A_t: once t < tau the target uses its own maps A*_t"),
        Mistake("inverted", wrong(lambda t, tau: t >= tau),
                "the comparison is inverted: t counts DOWN from T, so the source's maps A_t come "
                "first (t >= tau) and the target's own maps A*_t only once t < tau"),
        Mistake("boundary", wrong(lambda t, tau: t <= tau),
                "off at t == tau: Edit returns A*_t only for t strictly below tau, A_t at t == tau"),
    )
    return run_check("Edit(A_t, A*_t, t)", student, ref, _switch_cases(), mistakes, forbidden=FORBIDDEN["edit_switch"])


# ------------------------------------------------------------------ the replacement mapper

def _mapper_cases():
    gen = torch.Generator().manual_seed(6)
    n = 8
    one_to_one = _copy_mapper(n, {3: [3]})  # 'a red circle' -> 'a blue circle'
    one_to_two = _copy_mapper(n, {2: [2, 3]})  # 'a circle ...' -> 'a big triangle ...' (copy)
    average = one_to_two.clone()
    average[2, 2:4] = 0.5  # the average variant splits the source column over both tokens
    return [dict(A=_maps(gen, 4, 16, n), M=one_to_two),
            dict(A=_maps(gen, 2, 4, 16, n), M=average),
            dict(A=_maps(gen, 4, 64, n), M=one_to_one)]


def check_replace_mapper(fn: Callable) -> CheckResult:
    """Check ``fn(A, M)`` = A_hat = A M for copy and average mappers and batched A."""
    mistakes = (
        Mistake("transposed", lambda A, M: A @ M.T,
                "M is indexed M[source token i, target token j], so A_hat = A @ M; you used M "
                "transposed (M @ ... or A @ M.T)"),
        Mistake("renormalised", lambda A, M: (A @ M) / (A @ M).sum(-1, keepdim=True),
                "don't renormalise A_hat: with the copy variant a source column is copied to "
                "several target tokens on purpose, so its rows may sum to more than 1"),
        Mistake("elementwise", lambda A, M: A * torch.diagonal(M),
                "A_hat = A M is a matrix product over the token axis, not an element-wise product"),
    )
    return run_check("A_hat = A M", fn, apply_mapper, _mapper_cases(), mistakes, forbidden=FORBIDDEN["apply_mapper"])


# ------------------------------------------------------------------ the alpha blend

def _alpha_cases():
    gen = torch.Generator().manual_seed(7)
    alpha1 = torch.tensor([1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], dtype=torch.float64)
    alpha2 = torch.rand(8, generator=gen, dtype=torch.float64)
    # The first case has as many pixels as tokens (the 4x4 layer of the shipped model with its
    # 16 tokens), so that a blend over the wrong axis still has the right shape and is caught.
    return [dict(A_hat=_maps(gen, 2, 16, 16), A_star=_maps(gen, 2, 16, 16), alpha=alpha1),
            dict(A_hat=_maps(gen, 4, 64, 8), A_star=_maps(gen, 4, 64, 8), alpha=alpha2)]


def check_alpha_blend(fn: Callable) -> CheckResult:
    """Check ``fn(A_hat, A_star, alpha)`` = alpha (.) A_hat + (1 - alpha) (.) A*, alpha per token."""
    mistakes = (
        Mistake("swapped", lambda A_hat, A_star, alpha: alpha * A_star + (1 - alpha) * A_hat,
                "the weights are swapped: alpha = 1 means the token still follows the SOURCE's "
                "map, so alpha multiplies A_hat and (1 - alpha) multiplies A*"),
        Mistake("wrong_axis",
                lambda A_hat, A_star, alpha: alpha[:, None] * A_hat + (1 - alpha[:, None]) * A_star,
                "alpha has one weight per TOKEN: it must scale the last axis (the columns), not "
                "the pixel rows; broadcast it as it is (shape (n_tokens,)), no [:, None]"),
        Mistake("renormalised", lambda A_hat, A_star, alpha: (lambda B: B / B.sum(-1, keepdim=True))(
            alpha * A_hat + (1 - alpha) * A_star),
                "don't renormalise after blending: the formula is the plain weighted sum"),
    )
    return run_check("alpha (.) A_hat + (1 - alpha) (.) A*", fn, alpha_blend, _alpha_cases(),
                     mistakes, forbidden=FORBIDDEN["alpha_blend"])


# ------------------------------------------------------------------ re-weighting

def _reweight_cases():
    gen = torch.Generator().manual_seed(8)
    # First case square (16 pixels, 16 tokens) so scaling the pixel rows is caught by its hint.
    return [dict(A=_maps(gen, 2, 16, 16), token_indices=[3], scale=3.0),
            dict(A=_maps(gen, 4, 64, 16), token_indices=[2, 3], scale=0.25),
            dict(A=_maps(gen, 1, 2, 16, 16), token_indices=[5], scale=-1.0)]


@answer
def _renorm(B):
    return B / B.sum(-1, keepdim=True)


def check_reweight(fn: Callable) -> CheckResult:
    """Check ``fn(A, token_indices, scale)``: the columns of those tokens times ``scale``."""
    @answer
    def rows(A, token_indices, scale):
        B = A.clone()
        B[..., token_indices, :] *= scale
        return B

    @answer
    def others(A, token_indices, scale):
        return reweight(A, [j for j in range(A.shape[-1]) if j not in token_indices], 1.0 / scale)

    mistakes = (
        Mistake("renormalised", lambda A, token_indices, scale: _renorm(reweight(A, token_indices, scale)),
                "don't renormalise the rows after scaling: the paper multiplies column j* by c "
                "and leaves every other column as it is"),
        Mistake("rows", rows,
                "you scaled pixel rows: a token is a COLUMN of A (last axis), use A[..., j] not "
                "A[..., j, :]"),
        Mistake("shifted", lambda A, token_indices, scale: reweight(A, [j - 1 for j in token_indices], scale),
                "you scaled the column before the word's: token positions count the start token "
                "<|startoftext|> as 0, so use the indices exactly as given"),
        Mistake("shifted_right", lambda A, token_indices, scale: reweight(A, [j + 1 for j in token_indices], scale),
                "you scaled the column after the word's: use the indices exactly as given"),
        Mistake("others", others,
                "you scaled every OTHER token by 1/c; scale only the listed tokens, by c"),
        Mistake("every_column", lambda A, token_indices, scale: A * scale,
                "you scaled every column: only the listed tokens' columns change"),
    )
    return run_check("re-weighting", fn, reweight, _reweight_cases(), mistakes, forbidden=FORBIDDEN["reweight_attention"])


# ------------------------------------------------------------------ Algorithm 1 with your switch

class _SwitchControl:
    """An engine control (see p2p_lab.unet_attention) that applies ``edit_fn`` to the target row of
    every cross-attention layer: row 0 = source (A_t), row 1 = target (A*_t)."""

    def __init__(self, edit_fn: Callable, tau: int, timesteps, latent_hw):
        self.edit_fn, self.tau, self.timesteps = edit_fn, int(tau), [int(t) for t in timesteps]
        self.latent_hw, self.n_uncond, self.step = latent_hw, 0, 0

    def wants(self, layer) -> bool:
        return layer.is_cross

    def attention(self, layer, q, k, v, mask):
        from ..unet_attention import attend_all

        return attend_all(self, layer, q, k, v, mask)  # explicit probabilities -> self.attend

    def attend(self, layer, probs: torch.Tensor) -> torch.Tensor:
        A_t, A_star_t = probs[0], probs[1]  # each (heads, n_pixels, n_tokens)
        A_hat = self.edit_fn(A_t, A_star_t, self.timesteps[self.step], self.tau)
        if not isinstance(A_hat, torch.Tensor) or A_hat.shape != A_t.shape:
            raise TypeError(f"your Edit returned {type(A_hat).__name__} "
                            f"{tuple(getattr(A_hat, 'shape', ()))}; it must return A_t or A*_t, "
                            f"a tensor of shape {tuple(A_t.shape)}")
        return torch.stack([A_t, A_hat])  # (2, heads, n_pixels, n_tokens)


def run_edit_switch(pipe, source: str, target: str, edit_fn: Callable, tau: int, *, seed: int = 0,
                    num_inference_steps: int = 10, guidance_scale: float | None = None):
    """Algorithm 1 of notebook 05 with YOUR ``edit_fn(A_t, A_star_t, t, tau)``: source and target
    run as one batch from the same z_T; in every cross-attention layer the target attends with
    Edit(A_t, A*_t, t) (always to its own prompt y*'s values). ``tau`` is a timestep, as on the
    slides. For word swaps of one token each; returns images (2, H, W, 3): source, edit.
    """
    from ..p2p.sampling import images as decode, resolve_run, run_loop
    from ..p2p.schedule import scheduler_timesteps

    n = [len(pipe.tokenizer(p, add_special_tokens=False).input_ids) for p in (source, target)]
    if n[0] != n[1]:
        raise ValueError(f"the plain Edit switch needs prompts of the same token count ({source!r} "
                         f"has {n[0]}, {target!r} has {n[1]}); for other edits use "
                         f"p2p_lab.p2p.edit, which aligns the tokens with a mapper")
    run = resolve_run(pipe, seed, num_inference_steps, guidance_scale)
    control = _SwitchControl(edit_fn, tau, scheduler_timesteps(pipe, run.num_steps), run.latent_hw)
    return decode(pipe, run_loop(pipe, [source, target], run, control))


# ------------------------------------------------------------------ building the mapper M

def _shapes_tokenizer():
    from ..model import SHIPPED_MODEL
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(SHIPPED_MODEL / "tokenizer"))


MAPPER_PROMPTS = [("a red circle on a blue background", "a yellow circle on a blue background"),
                  ("a circle on a blue background", "a big triangle on a blue background"),
                  ("a red circle on a blue background", "a turquoise circle on a blue background"),
                  ("a big circle on a blue background", "a square on a blue background")]


def mapper_cases(prompts=MAPPER_PROMPTS, tokenizer=None) -> list[dict]:
    """Word-swap cases for ``build_mapper``: the word pairs, token counts and length of two real
    prompts (the shipped model's tokenizer), each in both variants."""
    from ..p2p.align import n_content_tokens, word_pairs

    tok = tokenizer or _shapes_tokenizer()
    cases = []
    for source, target in prompts:
        for variant in ("copy", "average"):
            cases.append(dict(pairs=word_pairs(tok, source, target), n_source=n_content_tokens(tok, source),
                              n_target=n_content_tokens(tok, target), length=tok.model_max_length,
                              variant=variant, _prompts=(tok, source, target)))
    return cases


@answer
def _mapper_reference(pairs, n_source, n_target, length, variant, _prompts):
    from ..p2p.align import replace_mapper

    tok, source, target = _prompts
    return replace_mapper(tok, source, target, variant)


@answer
def _mapper_wrong(variant_rule=None, tail=True, start=True, transpose=False):
    def compute(pairs, n_source, n_target, length, variant, _prompts):
        M = torch.zeros(length, length)
        for a, b in pairs:
            v = variant_rule(variant) if variant_rule else variant
            if len(a) == len(b):
                M[a, b] = 1.0
            else:
                M[torch.tensor(a)[:, None], torch.tensor(b)[None, :]] = (
                    1.0 / len(a) if v == "copy" else 1.0 / (len(a) * len(b)))
        if start:
            M[0, 0] = 1.0
        for j in range(n_target + 1, length):
            M[min(j + (n_source - n_target), length - 1) if tail else j, j] = 1.0
        return M.T if transpose else M
    return compute


def check_build_mapper(fn: Callable) -> CheckResult:
    """Check ``fn(pairs, n_source, n_target, length, variant)`` -> M (length, length) of a word swap,
    against the engine's own mapper (``p2p_lab.p2p.replace_mapper``) for real prompts."""
    def student(pairs, n_source, n_target, length, variant, _prompts):
        return fn([(list(a), list(b)) for a, b in pairs], n_source, n_target, length, variant)

    mistakes = (
        Mistake("variants_swapped", _mapper_wrong(lambda v: "average" if v == "copy" else "copy"),
                "copy and average are the other way round: 'copy' gives every target token of the group "
                "the whole source map (weight 1 / a for a source tokens), 'average' shares it, 1 / (a b)"),
        Mistake("no_tail_shift", _mapper_wrong(tail=False),
                "the end token and the padding must follow the words: when the target has n_target "
                "content tokens and the source n_source, target position j > n_target takes source "
                "position j + (n_source - n_target) (capped at length - 1)"),
        Mistake("no_start", _mapper_wrong(start=False),
                "the start token (position 0) maps to the start token: M[0, 0] = 1"),
        Mistake("transposed", _mapper_wrong(transpose=True),
                "M[i, j] is the weight of SOURCE token i in TARGET token j (A_hat = A M): rows are the "
                "source's positions, columns the target's; you built the transpose"),
    )
    return run_check("build_mapper", student, _mapper_reference, mapper_cases(), mistakes, forbidden=FORBIDDEN["build_mapper"])


# ------------------------------------------------------------------ the refine alignment

def alignment_cases(seed: int = 0) -> list[dict]:
    """Token-id sequences to align: an insertion, a deletion, a swap, unrelated sequences."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(0, 6, (n,), generator=g).tolist()  # noqa: E731
    return [dict(a=[5, 7, 9, 11], b=[5, 7, 3, 9, 11], match=1.0, mismatch=-1.0, gap=0.0),
            dict(a=[1, 2, 3, 4, 5], b=[1, 3, 4, 5], match=1.0, mismatch=-1.0, gap=0.0),
            dict(a=[1, 2, 3], b=[1, 8, 3], match=1.0, mismatch=-1.0, gap=-0.5),
            dict(a=rand(7), b=rand(9), match=2.0, mismatch=-1.0, gap=-1.0)]


@answer
def _table_reference(a, b, match, mismatch, gap):
    from ..p2p.align import alignment_table

    return torch.tensor(alignment_table(a, b, match, mismatch, gap))


@answer
def _table_wrong(border=True, mismatch_as_match=False, no_gaps=False):
    def compute(a, b, match, mismatch, gap):
        n, m = len(a), len(b)
        F = torch.zeros(n + 1, m + 1, dtype=torch.float64)
        if border:
            F[:, 0] = torch.arange(n + 1) * gap
            F[0, :] = torch.arange(m + 1) * gap
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                same = a[i - 1] == b[j - 1]
                diag = F[i - 1, j - 1] + (match if same or mismatch_as_match else mismatch)
                F[i, j] = diag if no_gaps else max(diag, F[i - 1, j] + gap, F[i, j - 1] + gap)
        return F
    return compute


def check_alignment_table(fn: Callable) -> CheckResult:
    """Check ``fn(a, b, match, mismatch, gap)`` -> Needleman-Wunsch's table F, (len(a) + 1, len(b) + 1)."""
    def student(a, b, match, mismatch, gap):
        return torch.as_tensor(fn(list(a), list(b), match, mismatch, gap), dtype=torch.float64)

    mistakes = (
        Mistake("no_border", _table_wrong(border=False),
                "the first row and column are the cost of aligning against nothing: F[i][0] = i * gap, "
                "F[0][j] = j * gap (zero only when gap = 0)"),
        Mistake("mismatch_scored_as_match", _table_wrong(mismatch_as_match=True),
                "the diagonal move adds `match` only when a[i-1] == b[j-1], `mismatch` otherwise"),
        Mistake("diagonal_only", _table_wrong(no_gaps=True),
                "take the best of three moves: diagonal (align a[i-1] with b[j-1]), up (a gap in b, "
                "F[i-1][j] + gap) and left (a gap in a, F[i][j-1] + gap)"),
    )
    return run_check("alignment_table", student, _table_reference, alignment_cases(), mistakes, atol=1e-9, forbidden=FORBIDDEN["alignment_table"])


# ------------------------------------------------------------------ the local-blend mask

def blend_cases(seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    cases = []
    for rows, hw, dilate, threshold in ((2, (8, 8), 1, 0.3), (3, (16, 16), 2, 0.5), (2, (4, 6), 0, 0.2)):
        maps = torch.rand(rows, 1, *hw, generator=g) ** 4  # peaked, like a word's map
        cases.append(dict(maps=maps, dilate=dilate, threshold=threshold))
    return cases


@answer
def _blend_reference(maps, dilate, threshold):
    from ..p2p.blend import word_mask

    return word_mask(maps, dilate, threshold).double()


@answer
def _blend_wrong(dilate_on=True, normalise=True, union=True):
    def compute(maps, dilate, threshold):
        import torch.nn.functional as F

        m = F.max_pool2d(maps, 2 * dilate + 1, stride=1, padding=dilate) if dilate_on and dilate else maps
        if normalise:
            m = m / m.flatten(1).amax(1)[:, None, None, None]
        m = m > threshold
        return (m[1:] | m[:1] if union else m[1:]).double()
    return compute


def check_blend_mask(fn: Callable) -> CheckResult:
    """Check ``fn(maps, dilate, threshold)`` -> the local blend's region, (rows - 1, 1, h, w) bool."""
    def student(maps, dilate, threshold):
        out = fn(maps.clone(), dilate, threshold)
        return torch.as_tensor(out).double()

    mistakes = (
        Mistake("no_dilation", _blend_wrong(dilate_on=False),
                "dilate first: a max-pool of size 2 * dilate + 1 with stride 1 and padding dilate grows "
                "the region, so the new object's edge is not cut off"),
        Mistake("no_normalisation", _blend_wrong(normalise=False),
                "divide each map by its own maximum before thresholding: the threshold is a fraction of the peak"),
        Mistake("target_only", _blend_wrong(union=False),
                "a target's region is the union of its own map's region and the SOURCE's (row 0): the old "
                "object's place must be repainted too"),
    )
    return run_check("blend_mask", student, _blend_reference, blend_cases(), mistakes, atol=0, forbidden=FORBIDDEN["blend_mask"])


# ------------------------------------------------------------------ an attention processor that records

RECORDER_LAYER = "up_blocks.0.attentions.0.transformer_blocks.0.attn2"  # an 8x8 layer of the shipped model


def _record_with(processor, pipe, layer: str, prompt: str, steps: int, seed: int):
    """Sample with ``processor`` installed on one layer (diffusers' set_processor), then restore."""
    from .. import ldm

    module = pipe.unet.get_submodule(layer)
    original = module.processor
    module.set_processor(processor)
    try:
        return ldm.sample(pipe, prompt, seed, steps, 4.0, progress=False).images
    finally:
        module.set_processor(original)


def check_map_recorder(recorder_cls, prompt: str = "a red circle on a blue background", steps: int = 4,
                       seed: int = 0, forbidden: tuple | None = None) -> CheckResult:
    """Check an attention processor class: installed on one cross-attention layer of the shipped
    model, it must leave the image as diffusers' default processor draws it and append, at every
    call, the conditional rows' probabilities averaged over heads, (n_cond, n_pixels, n_tokens), to
    ``self.maps``, equal to what the package's AttentionStore records for that layer and step.
    ``forbidden``: package functions the processor may not call (default: ``FORBIDDEN["MapRecorder"]``)."""
    import contextlib

    from .. import ldm
    from ..p2p import AttentionStore, record_maps

    name, pipe = "map_recorder", check_pipeline()
    forbidden = FORBIDDEN["MapRecorder"] if forbidden is None else forbidden
    try:
        from ..forbidding import ForbiddenCall, forbid

        with forbid(*forbidden) if forbidden else contextlib.nullcontext():
            rec = recorder_cls()
            image = _record_with(rec, pipe, RECORDER_LAYER, prompt, steps, seed)
    except NotImplementedError:
        return _report(name, False, "not implemented yet: replace the `raise NotImplementedError` with your solution")
    except ForbiddenCall as err:
        return _report(name, False, f"your processor {err} (the graded version blocks that call)")
    except Exception as err:  # noqa: BLE001 - the student's error is the message
        return _report(name, False, f"your processor raised {type(err).__name__}: {err}")
    plain = ldm.sample(pipe, prompt, seed, steps, 4.0, progress=False).images
    if not torch.allclose(image, plain, atol=1e-4):
        return _report(name, False, "hint: your processor changed the layer's output; return exactly what the "
                                    "default computes: A V per head, heads merged (attn.batch_to_head_dim), then "
                                    "attn.to_out[0] and attn.to_out[1]")
    maps = getattr(rec, "maps", None)
    if not isinstance(maps, list) or len(maps) != steps:
        return _report(name, False, f"hint: append one map per call to self.maps (a list): the layer is called "
                                    f"once per step, {steps} times here; got {type(maps).__name__} of length "
                                    f"{len(maps) if hasattr(maps, '__len__') else '?'}")
    store = AttentionStore(resolutions=None)
    record_maps(pipe, [prompt], store, seed=seed, num_inference_steps=steps, guidance_scale=4.0)
    for i, got in enumerate(maps):
        want = store.sums[(RECORDER_LAYER, i)] / store.counts[(RECORDER_LAYER, i)]  # (1, n_pixels, n_tokens)
        got = torch.as_tensor(got).detach().float().cpu()
        if got.shape != want.shape:
            hint = ("average over the heads (dim 1 of (batch, heads, n_pixels, n_tokens))" if got.dim() == 4
                    else "keep the conditional rows only, probs[batch // 2:] (diffusers' batch is cat([uncond, cond]))"
                    if got.shape[0] == 2 * want.shape[0] else f"expected shape {tuple(want.shape)}")
            return _report(name, False, f"hint: the map of step {i} has shape {tuple(got.shape)}: {hint}")
        if not torch.allclose(got, want, atol=1e-5):
            return _report(name, False, f"hint: the map of step {i} differs from the store's by "
                                        f"{(got - want).abs().max():.2g}: keep the CONDITIONAL half (the second), "
                                        f"softmax(Q K^T / sqrt(d)) over the tokens, averaged over heads")
    return _report(name, True, f"the image is unchanged and the {steps} maps equal the AttentionStore's")


def _report(name: str, passed: bool, message: str) -> CheckResult:
    result = CheckResult(name, passed, message)
    print(result)
    return result


# ------------------------------------------------------------------ the editing processor (Algorithm 1 with M and alpha)

def _attention_module(seed: int, heads: int, dim_head: int = 4, query_dim: int = 8, context_dim: int = 6):
    """A diffusers cross-attention layer with weights drawn from ``seed`` (each parameter filled in
    name order from one CPU generator, so the weights do not depend on diffusers' initialisation)."""
    from diffusers.models.attention_processor import Attention

    attn = Attention(query_dim=query_dim, cross_attention_dim=context_dim, heads=heads, dim_head=dim_head)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(attn.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return attn.eval()


def processor_cases(seed: int = 0) -> list[dict]:
    """Seeded batches as the sampling loop makes them: (1 + T) unconditional rows, then the source's
    conditional row and T targets'; M (T, L, L) a mapper, alpha (T, steps, L) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for n_targets, heads, n_pix, n_tok, step in ((1, 2, 5, 4, 1), (2, 3, 6, 5, 2)):
        batch = 2 * (1 + n_targets)
        M = torch.rand(n_targets, n_tok, n_tok, generator=g)  # any mapper: the rules apply to every M
        cases.append(dict(hidden=torch.randn(batch, n_pix, 8, generator=g),
                          context=torch.randn(batch, n_tok, 6, generator=g), M=M,
                          alpha=torch.rand(n_targets, 3, n_tok, generator=g), step=step, heads=heads,
                          weight_seed=seed + n_targets))
    return cases


@answer
def _processor_reference(hidden, context, M, alpha, step, heads, weight_seed):
    """The edited layer's output, from the formulas: A = softmax(Q K^T / sqrt(d)) per row and head;
    the targets' conditional rows attend with alpha_t (.) (A_src M) + (1 - alpha_t) (.) A*; the rest as usual."""
    attn = _attention_module(weight_seed, heads)
    with torch.no_grad():
        b, d = hidden.shape[0], attn.to_q.out_features // heads
        split = lambda x: x.reshape(b, x.shape[1], heads, d).permute(0, 2, 1, 3)  # noqa: E731 (b, h, n, d)
        q, k, v = split(attn.to_q(hidden)), split(attn.to_k(context)), split(attn.to_v(context))
        A = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)  # (b, h, n_pix, L)
        u, a = b // 2, alpha[:, step][:, None, None, :]  # a: (T, 1, 1, L)
        A_src = A[u:u + 1]  # (1, h, n_pix, L): the source's conditional row
        A = torch.cat([A[:u + 1], a * (A_src @ M[:, None]) + (1 - a) * A[u + 1:]])
        out = (A @ v).permute(0, 2, 1, 3).reshape(b, hidden.shape[1], heads * d)
        return attn.to_out[1](attn.to_out[0](out))


def _processor_wrong(uncond=False, head_major=False, no_alpha=False, alpha_swapped=False,
                     transpose=False, source_edited=False, first_row=False):
    """The editing processor with one typical mistake (see check_edit_processor's hints)."""
    @answer
    def compute(hidden, context, M, alpha, step, heads, weight_seed):
        attn = _attention_module(weight_seed, heads)
        with torch.no_grad():
            b, d = hidden.shape[0], attn.to_q.out_features // heads
            split = lambda x: x.reshape(b, x.shape[1], heads, d).permute(0, 2, 1, 3)  # noqa: E731
            q, k, v = split(attn.to_q(hidden)), split(attn.to_k(context)), split(attn.to_v(context))
            A = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)  # (b, h, n_pix, L)
            if head_major:  # the batch-major rows (b * heads + h) read as (heads, batch)
                A = A.reshape(heads, b, *A.shape[2:]).transpose(0, 1)
            u = b // 2
            n_t = M.shape[0]
            a = alpha[:, step][:, None, None, :]
            a = torch.ones_like(a) if no_alpha else (1 - a) if alpha_swapped else a
            Mx = M.transpose(-1, -2) if transpose else M
            src_row = 0 if first_row else u
            A_src = A[src_row:src_row + 1]
            edited = a * (A_src @ Mx[:, None]) + (1 - a) * A[u + 1:]
            rows = [A[:u + 1], edited]
            if uncond:  # the unconditional targets edited with the unconditional source's maps
                rows = [A[:1], a * (A[:1] @ Mx[:, None]) + (1 - a) * A[1:u], A[u:u + 1], edited]
            A = torch.cat(rows)
            if source_edited:  # the source's own row mapped as well
                A[u] = A[u] @ Mx[0]
            if head_major:
                A = A.transpose(0, 1).reshape(b, heads, *A.shape[2:])
            out = (A @ v).permute(0, 2, 1, 3).reshape(b, hidden.shape[1], heads * d)
            return attn.to_out[1](attn.to_out[0](out))
    return compute


def check_edit_processor(processor_cls) -> CheckResult:
    """Check an editing attention processor class ``processor_cls(M, alpha)`` (its ``step`` set
    before each call): on seeded layers and batches, the output must be the layer's with the
    targets' conditional rows attending with alpha_t (.) (A M) + (1 - alpha_t) (.) A*."""
    def student(hidden, context, M, alpha, step, heads, weight_seed):
        if not callable(processor_cls):
            raise TypeError(f"pass the class EditProcessor itself, not {type(processor_cls).__name__}")
        proc = processor_cls(M.clone(), alpha.clone())
        proc.step = step
        with torch.no_grad():
            return proc(_attention_module(weight_seed, heads), hidden.clone(), encoder_hidden_states=context.clone())

    w = _processor_wrong
    mistakes = (
        Mistake("uncond_edited", w(uncond=True),
                "you edited the unconditional half too: diffusers' batch is cat([unconditional rows, conditional "
                "rows]); leave the first batch // 2 rows as they are and edit only the targets of the second half"),
        Mistake("head_major", w(head_major=True),
                "the heads are mixed up: attn.head_to_batch_dim puts each batch row's heads next to each other "
                "(row b * heads + h); reshape the probabilities to (batch, heads, n_pixels, n_tokens), not (heads, batch, ...)"),
        Mistake("source_row", w(first_row=True),
                "you took row 0 as the source: that is the unconditional source; the source's conditional row is "
                "row batch // 2, the first of the second half"),
        Mistake("no_alpha", w(no_alpha=True),
                "the targets attend with A M alone: blend with alpha of this step, alpha[:, self.step] (one weight per "
                "target and token): alpha (.) A M + (1 - alpha) (.) A*"),
        Mistake("alpha_swapped", w(alpha_swapped=True),
                "alpha and 1 - alpha are swapped: alpha = 1 means the source's (mapped) map, 0 the target's own"),
        Mistake("transposed", w(transpose=True),
                "the mapper is transposed: A_hat = A M with M[i, j] the weight of source token i in target token j "
                "(A @ M, not A @ M.T)"),
        Mistake("source_edited", w(source_edited=True),
                "you changed the source's row: the source attends with its own maps; only the target rows are edited"),
    )
    return run_check("edit_processor", student, _processor_reference, processor_cases(), mistakes, atol=1e-5,
                     forbidden=FORBIDDEN["EditProcessor"])


def _edit_plan(pipe, source: str, targets: list[str], cross_tau, num_steps: int):
    from ..p2p.controls import build_plan

    return build_plan(pipe.tokenizer, source, targets, cross_tau=cross_tau, self_tau=0.0, num_steps=num_steps)


def run_edit_processor(pipe, source: str, targets, processor_cls, *, cross_tau=0.8, seed: int = 0,
                       num_inference_steps: int = 10, guidance_scale: float | None = None):
    """A word swap sampled with YOUR processor: ``processor_cls(M, alpha)`` built from the engine's
    mapper and alpha schedule (M (T, L, L), alpha (T, steps, L)), installed on every cross-attention
    layer, its ``step`` set before each UNet call; the self-attention layers run as usual. Source
    and targets share z_T. Returns images (1 + T, H, W, 3): compare with
    ``p2p.edit(pipe, source, targets, cross_tau=..., self_tau=0, context_tau=0)``."""
    from ..p2p.sampling import images as decode, prompt_list, resolve_run, run_loop
    from ..unet_attention import cross_attention_layers

    targets = prompt_list(targets, "targets")
    run = resolve_run(pipe, seed, num_inference_steps, guidance_scale)
    plan = _edit_plan(pipe, source, targets, cross_tau, run.num_steps)
    if set(plan.modes) != {"replace"}:
        raise ValueError(f"run_edit_processor runs word swaps (the same number of words in source and target); "
                         f"{targets!r} has a refinement: use p2p.edit for insertions")
    proc = processor_cls(plan.M.clone(), plan.alpha.clone())
    proc.step = 0
    modules = [pipe.unet.get_submodule(name) for name in cross_attention_layers(pipe.unet)]
    original = [m.processor for m in modules]

    def next_step(i, z):
        proc.step = i + 1
        return z

    for m in modules:
        m.set_processor(proc)
    try:
        return decode(pipe, run_loop(pipe, [source, *targets], run, on_step=next_step))
    finally:
        for m, p in zip(modules, original):
            m.set_processor(p)


# ------------------------------------------------------------------ the local blend across steps

BLENDER_RES = ((4, 4), (8, 8))  # the layers of one step in the check's cases: (h, w) of each


def blender_cases(seed: int = 0) -> list[dict]:
    """Seeded sampling runs as the blender sees them: per step, one layer's conditional
    probabilities (rows, heads, pixels, L) at each resolution of ``BLENDER_RES``, then the source's
    and the targets' latents (1 and T, C, 8, 8). Every step's maps are new (peaked at a random
    place), so a mask made from an earlier step's maps shows."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for n_steps, rows, heads, L, start_step, dilate, threshold in ((4, 2, 2, 6, 1, 1, 0.3), (5, 3, 3, 5, 2, 0, 0.5)):
        centres = torch.rand(n_steps, rows, 2, generator=g)  # where each step's word map peaks, in [0, 1)^2
        probs = {}
        for k, (h, w) in enumerate(BLENDER_RES):  # layers of different head counts, as in a UNet
            yy, xx = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
            d2 = (yy.flatten() - centres[..., :1]) ** 2 + (xx.flatten() - centres[..., 1:]) ** 2  # (steps, rows, hw)
            logits = torch.randn(n_steps, rows, heads + 2 * k, h * w, L, generator=g)
            logits[..., 2:4] += 6.0 * torch.exp(-d2 / 0.02)[:, :, None, :, None]  # the words own a blob
            probs[f"probs_{h}x{w}"] = logits.softmax(-1)
        tokens = torch.zeros(rows, L)
        tokens[:, 2] = 1.0
        tokens[1:, 3] = 1.0  # the targets' word may span two tokens
        cases.append(dict(**probs, tokens=tokens, z_src=torch.randn(n_steps, 1, 4, 8, 8, generator=g),
                          z_tgt=torch.randn(n_steps, rows - 1, 4, 8, 8, generator=g), start_step=start_step,
                          dilate=dilate, threshold=threshold))
    return cases


def _blender_layers(case: dict, step: int):
    """The layers of one step: (probs (rows, heads, pixels, L), (h, w))."""
    return [(case[f"probs_{h}x{w}"][step], (h, w)) for h, w in BLENDER_RES]


@answer
def _blender_reference(tokens, z_src, z_tgt, start_step, dilate, threshold, **probs):
    """The engine's local blend (p2p_lab.p2p.blend.BlendState) fed the case's layers step by step."""
    from types import SimpleNamespace

    from ..p2p.blend import BlendState

    opts = LocalBlend(["word"], threshold=threshold, dilate=dilate)
    state = BlendState(opts, tokens, [h for h, _ in BLENDER_RES], z_src.shape[-2:], start_step)
    case, outs = dict(probs, tokens=tokens), []
    for s in range(z_src.shape[0]):
        if s >= start_step:  # the engine asks for the maps only from the first blended step on
            for p, res in _blender_layers(case, s):
                state.add(SimpleNamespace(resolution=res), p)
        outs.append(state.apply(s, z_src[s], z_tgt[s]))
    return torch.stack(outs)


@answer
def _blender_wrong(stale=False, early=False, nearest=False, inverted=False, last_layer=False, heads_sum=False):
    """The blender with one typical mistake (see check_local_blender's hints)."""
    def compute(tokens, z_src, z_tgt, start_step, dilate, threshold, **probs):
        import torch.nn.functional as F

        from ..p2p.blend import word_mask

        case = dict(probs, tokens=tokens)
        outs, acc, count = [], None, 0
        for s in range(z_src.shape[0]):
            for p, (h, w) in _blender_layers(case, s):
                A = p.sum(1) if heads_sum else p.mean(1)
                m = (A * tokens[:, None, :]).sum(-1).reshape(p.shape[0], 1, h, w)
                m = F.interpolate(m, size=z_src.shape[-2:], mode="nearest") if nearest else \
                    F.interpolate(m, size=z_src.shape[-2:], mode="bilinear", align_corners=False)
                acc = m if (acc is None or last_layer) else acc + m
                count = 1 if last_layer else count + 1
            if s < start_step and not early:
                out = z_tgt[s]
            else:
                mask = word_mask(acc / count, dilate, threshold).to(z_tgt.dtype)
                out = z_tgt[s] + mask * (z_src[s] - z_tgt[s]) if inverted else z_src[s] + mask * (z_tgt[s] - z_src[s])
            if not stale:
                acc, count = None, 0
            outs.append(out)
        return torch.stack(outs)
    return compute


def run_blender_case(blender_cls, tokens, z_src, z_tgt, start_step, dilate, threshold, **probs):
    """A case of :func:`blender_cases` through ``blender_cls``, step by step as the sampler calls it:
    every layer's ``add``, then ``apply``. Returns the targets' latents after each step, stacked."""
    if not callable(blender_cls):
        raise TypeError(f"pass the class LocalBlender itself, not {type(blender_cls).__name__}")
    case = dict(probs, tokens=tokens)
    blender = blender_cls(tokens.clone(), tuple(z_src.shape[-2:]), start_step, dilate, threshold)
    outs = []
    for s in range(z_src.shape[0]):
        for p, res in _blender_layers(case, s):
            blender.add(p.clone(), res)
        out = blender.apply(s, z_src[s].clone(), z_tgt[s].clone())
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"apply returned {type(out).__name__} at step {s}: return the targets' latents, "
                            f"a tensor shaped like z_tgt")
        outs.append(out)
    return torch.stack(outs)


def check_local_blender(blender_cls) -> CheckResult:
    """Check a local-blend class ``blender_cls(tokens, latent_hw, start_step, dilate, threshold)``:
    during each step its ``add(probs, resolution)`` gets every blended layer's conditional
    probabilities, and after the step ``apply(step, z_src, z_tgt)`` returns the blended targets."""
    def student(**case):
        return run_blender_case(blender_cls, **case)

    w = _blender_wrong
    mistakes = (
        Mistake("stale_maps", w(stale=True),
                "each step's mask must come from THAT step's maps: empty the sum (and the count) in every "
                "apply, including the steps before start_step, or the maps of earlier steps pile up"),
        Mistake("blends_early", w(early=True),
                "you blended before start_step: until then apply returns z_tgt unchanged (the new object "
                "has not found its place yet)"),
        Mistake("inverted", w(inverted=True),
                "the blend is the wrong way round: OUTSIDE the mask the target takes the source's latent, "
                "inside it keeps its own: z_src + m * (z_tgt - z_src)"),
        Mistake("nearest", w(nearest=True),
                "upsample each layer's map to the latent with F.interpolate(..., mode='bilinear', "
                "align_corners=False), not the default 'nearest'"),
        Mistake("last_layer_only", w(last_layer=True),
                "add every layer's map to a running sum (and count the layers): you kept only the last one"),
        Mistake("heads_summed", w(heads_sum=True),
                "average the probabilities over the heads (dim 1) before summing the words' tokens: layers "
                "with different head counts would otherwise weigh differently"),
    )
    return run_check("local_blender", student, _blender_reference, blender_cases(), mistakes, atol=1e-6,
                     forbidden=FORBIDDEN["LocalBlender"])


class _BlenderBridge:
    """The engine's view of the student's blender: every step's maps of the blended layers go to
    ``add``, and the latents after every step through ``apply``."""

    last_mask = None  # the student's masks stay the student's

    def __init__(self, state, blender):
        self.res, self.blender = state.res, blender

    def wants(self, layer, step) -> bool:
        return layer.is_cross and layer.res in self.res

    def add(self, layer, probs):
        self.blender.add(probs.detach().clone(), tuple(layer.resolution))

    def apply(self, step, x_src, x_tgt):
        return self.blender.apply(step, x_src.clone(), x_tgt.clone())


@dataclasses.dataclass
class _StudentBlend(LocalBlend):
    """A LocalBlend whose maps and latents go through a student's blender class."""

    blender_cls: type | None = None

    def state(self, tokenizer, prompts, layers, latent_hw, num_steps):
        state = super().state(tokenizer, prompts, layers, latent_hw, num_steps)
        blender = self.blender_cls(state.tokens.clone(), tuple(latent_hw), state.first, self.dilate, self.threshold)
        return _BlenderBridge(state, blender)


def run_local_blender(pipe, source: str, targets, words, blender_cls, *, start: float = 0.2, dilate: int = 1,
                      threshold: float = 0.3, **options):
    """An edit with YOUR local blend: ``blender_cls(tokens, latent_hw, start_step, dilate,
    threshold)`` (tokens (1 + T, L): 1 at the words' tokens in each prompt) gets, during every step,
    the blended layers' conditional probabilities through ``add(probs, resolution)`` and the latents
    after the step through ``apply(step, z_src, z_tgt)``; everything else is ``p2p.edit``'s (its
    options as keywords). Returns images (1 + T, H, W, 3): compare with ``p2p.edit(...,
    local_blend=p2p.LocalBlend(words, threshold, start, dilate=dilate))``."""
    from ..p2p.edit import edit

    if not callable(blender_cls):
        raise TypeError(f"pass the class LocalBlender itself, not {type(blender_cls).__name__}")
    blend = _StudentBlend(words, threshold=threshold, start=start, dilate=dilate, blender_cls=blender_cls)
    return edit(pipe, source, targets, local_blend=blend, **options).images
