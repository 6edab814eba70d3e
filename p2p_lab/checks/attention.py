"""Public checks for the exercises of notebooks 01 (attention) and 02 (cross-attention).

Each ``check_<exercise>(fn)`` runs the student's function on seeded inputs, compares it with
:mod:`p2p_lab.attention` (itself tested against ``torch.nn.functional.scaled_dot_product_attention``
and ``torch.nn.MultiheadAttention``) and names the likely mistake when they differ. The first case
of each check is square (as many queries as keys as features) so that the typical mistakes still
give outputs of the right shape and can be recognised; the later cases are not square.
The ``*_MISTAKES`` tuples and ``*_cases`` functions are reused by the hidden tests.
"""
from __future__ import annotations

import math

import torch

from .. import attention as ref
from ._core import Mistake, answer, run_check

__all__ = ["check_attention", "check_multi_head_attention", "check_cross_attention",
           "check_token_maps", "attention_reference", "multi_head_reference",
           "cross_attention_reference", "attention_cases", "multi_head_cases", "cross_attention_cases",
           "token_maps_cases", "ATTENTION_MISTAKES", "MULTI_HEAD_MISTAKES",
           "CROSS_ATTENTION_MISTAKES", "TOKEN_MAPS_MISTAKES"]

# The package's (and torch's) own implementations of what notebooks 01-02 ask: blocked while a
# student's function runs, in the public checks and in the grader's hidden tests.
FORBIDDEN = (
    "torch.nn.functional.scaled_dot_product_attention",
    "torch.nn.functional.multi_head_attention_forward",
    "torch.nn.MultiheadAttention.forward",
    "p2p_lab.attention.scaled_dot_product_attention",
    "p2p_lab.attention.self_attention",
    "p2p_lab.attention.cross_attention",
    "p2p_lab.attention.multi_head_attention",
    "p2p_lab.attention.token_maps",
    "p2p_lab.attention.CrossAttentionRecord.maps",
)



def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


# --- notebook 01, exercise 1: attention(Q, K, V) -> (output, weights) -------------------------

def _weights(scores):
    return scores.softmax(dim=-1)


@answer
def _attention_from_scores(scores, V, axis=-1):
    weights = scores.softmax(dim=axis)
    return weights @ V, weights


ATTENTION_MISTAKES = (
    Mistake("no_scaling", lambda Q, K, V: _attention_from_scores(Q @ K.transpose(-2, -1), V),
            "you did not divide the scores by sqrt(d_k): use Q @ K^T / sqrt(d_k) with d_k = Q.shape[-1]"),
    Mistake("scaled_by_d", lambda Q, K, V: _attention_from_scores(Q @ K.transpose(-2, -1) / Q.shape[-1], V),
            "you divided the scores by d_k; divide by its square root, sqrt(d_k)"),
    Mistake("softmax_wrong_axis",
            lambda Q, K, V: _attention_from_scores(Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1]), V, -2),
            "your softmax runs over the queries (dim=-2): each query's weights must sum to 1 over the "
            "keys, so take the softmax over the last axis (dim=-1)"),
    Mistake("keys_not_transposed", lambda Q, K, V: _attention_from_scores(Q @ K / math.sqrt(Q.shape[-1]), V),
            "you multiplied Q @ K: the scores are dot products of queries with keys, Q @ K^T "
            "(K.transpose(-2, -1))"),
    Mistake("wrong_matmul_order",
            lambda Q, K, V: _attention_from_scores(K @ Q.transpose(-2, -1) / math.sqrt(Q.shape[-1]), V),
            "your scores are K @ Q^T, whose rows belong to the keys; use Q @ K^T so that row i holds "
            "query i's scores against every key"),
    Mistake("no_softmax", lambda Q, K, V: (Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1]) @ V,
                                           Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])),
            "you used the raw scores as weights: apply softmax over the keys first"),
    Mistake("returns_scores",
            lambda Q, K, V: (ref.scaled_dot_product_attention(Q, K, V)[0],
                             Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])),
            "your output is right but the second value you return is the scores; return the weights "
            "softmax(scores)"),
    Mistake("outputs_swapped", lambda Q, K, V: ref.scaled_dot_product_attention(Q, K, V)[::-1],
            "return (output, weights) in this order"),
)


def attention_cases(seed: int = 0, shapes=((4, 4, 4, 4), (5, 3, 4, 2), (2, 3, 6, 7, 8, 5))):
    """Seeded (Q, K, V) cases: each shape is (*batch, n_query, n_key, d_k, d_v)."""
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for *batch, n, m, d_k, d_v in shapes:
        cases.append(dict(Q=_randn(gen, *batch, n, d_k), K=_randn(gen, *batch, m, d_k),
                          V=_randn(gen, *batch, m, d_v)))
    return cases


@answer
def attention_reference(Q, K, V):
    return ref.scaled_dot_product_attention(Q, K, V)


def check_attention(fn):
    """Notebook 01: ``fn(Q, K, V)`` must return ``(softmax(Q K^T / sqrt(d_k)) V, weights)``."""
    return run_check("attention", fn, attention_reference, attention_cases(),
                     mistakes=ATTENTION_MISTAKES, forbidden=FORBIDDEN)


# --- notebook 01, exercise 2: multi_head_attention(X, W_q, W_k, W_v, W_o, heads) --------------

@answer
def _mha(X, W_q, W_k, W_v, W_o, heads, scale=None, split="right", merge="right", project=True, axis=-1):
    d_head = W_q.shape[1] // heads

    def split_(t):
        if split == "right":
            return ref.split_heads(t, heads)
        return t.reshape(*t.shape[:-2], heads, t.shape[-2], d_head)  # scrambles tokens and heads

    q, k, v = split_(X @ W_q), split_(X @ W_k), split_(X @ W_v)  # (..., heads, n, d_head)
    scores = q @ k.transpose(-2, -1) / (math.sqrt(d_head) if scale is None else scale)
    weights = scores.softmax(dim=axis)
    out = weights @ v  # (..., heads, n, d_head)
    out = ref.merge_heads(out) if merge == "right" else out.reshape(*out.shape[:-3], out.shape[-2], -1)
    return (out @ W_o if project else out), weights


MULTI_HEAD_MISTAKES = (
    Mistake("scaled_by_model_width", lambda X, W_q, W_k, W_v, W_o, heads:
            _mha(X, W_q, W_k, W_v, W_o, heads, scale=math.sqrt(W_q.shape[1])),
            "you divided the scores by sqrt(d_model); each head's scores are divided by the square "
            "root of the head's own width, d_head = d_model / heads"),
    Mistake("no_scaling", lambda X, W_q, W_k, W_v, W_o, heads: _mha(X, W_q, W_k, W_v, W_o, heads, scale=1.0),
            "you did not divide the scores by sqrt(d_head)"),
    Mistake("softmax_wrong_axis", lambda X, W_q, W_k, W_v, W_o, heads:
            _mha(X, W_q, W_k, W_v, W_o, heads, axis=-2),
            "your softmax runs over the queries: take it over the keys (dim=-1)"),
    Mistake("split_without_transpose", lambda X, W_q, W_k, W_v, W_o, heads:
            _mha(X, W_q, W_k, W_v, W_o, heads, split="reshape"),
            "your heads mix tokens: reshape (..., n, d_model) to (..., n, heads, d_head) first, then "
            "transpose to (..., heads, n, d_head); a direct reshape to (heads, n, d_head) scrambles them"),
    Mistake("merge_without_transpose", lambda X, W_q, W_k, W_v, W_o, heads:
            _mha(X, W_q, W_k, W_v, W_o, heads, merge="reshape"),
            "your weights are right but the heads' outputs are joined wrongly: transpose "
            "(..., heads, n, d_head) to (..., n, heads, d_head) before reshaping to (..., n, d_model)"),
    Mistake("no_output_projection", lambda X, W_q, W_k, W_v, W_o, heads:
            _mha(X, W_q, W_k, W_v, W_o, heads, project=False),
            "you forgot the output projection: multiply the concatenated heads by W_o"),
)


def multi_head_cases(seed: int = 0, shapes=((4, 8, 2), (2, 5, 12, 3), (3, 1, 8, 8), (2, 2, 6, 16, 4))):
    """Seeded cases; each shape is (*batch, n, d_model, heads); W_o is square."""
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for *batch, n, d, heads in shapes:
        w = [_randn(gen, d, d, scale=d ** -0.5) for _ in range(4)]
        cases.append(dict(X=_randn(gen, *batch, n, d), W_q=w[0], W_k=w[1], W_v=w[2], W_o=w[3],
                          heads=heads))
    return cases


@answer
def multi_head_reference(X, W_q, W_k, W_v, W_o, heads):
    return ref.multi_head_attention(X, W_q, W_k, W_v, W_o, heads)


def check_multi_head_attention(fn):
    """Notebook 01: ``fn(X, W_q, W_k, W_v, W_o, heads)`` -> ``(output, weights per head)``."""
    return run_check("multi_head_attention", fn, multi_head_reference, multi_head_cases(),
                     mistakes=MULTI_HEAD_MISTAKES, forbidden=FORBIDDEN)


# --- notebook 02, exercise 1: cross_attention(Y, X, W_q, W_k, W_v) -----------------------------

@answer
def _cross(q_src, kv_src, W_q, W_k, W_v, scale=None, axis=-1, v_src=None):
    q, k = q_src @ W_q, kv_src @ W_k
    v = (kv_src if v_src is None else v_src) @ W_v
    scores = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale is None else scale)
    return _attention_from_scores(scores, v, axis)


CROSS_ATTENTION_MISTAKES = (
    Mistake("queries_keys_swapped", lambda Y, X, W_q, W_k, W_v: _cross(X, Y, W_q, W_k, W_v),
            "queries and keys are swapped: the queries come from Y (the sequence being produced, n "
            "tokens), the keys and values from X (the source, m tokens); the weights are n x m"),
    Mistake("values_from_queries", lambda Y, X, W_q, W_k, W_v: _cross(Y, X, W_q, W_k, W_v, v_src=Y),
            "your values come from Y: values pair with keys, so both come from X (V = X W_v)"),
    Mistake("self_attention", lambda Y, X, W_q, W_k, W_v: _cross(Y, Y, W_q, W_k, W_v),
            "you computed self-attention on Y: the keys and values must come from the other sequence X"),
    Mistake("no_scaling", lambda Y, X, W_q, W_k, W_v: _cross(Y, X, W_q, W_k, W_v, scale=1.0),
            "you did not divide the scores by sqrt(d_k)"),
    Mistake("scaled_by_d", lambda Y, X, W_q, W_k, W_v: _cross(Y, X, W_q, W_k, W_v, scale=W_q.shape[1]),
            "you divided the scores by d_k; divide by sqrt(d_k)"),
    Mistake("softmax_wrong_axis", lambda Y, X, W_q, W_k, W_v: _cross(Y, X, W_q, W_k, W_v, axis=-2),
            "your softmax runs over the target tokens: each target token's weights must sum to 1 over "
            "the source tokens (dim=-1)"),
)


def cross_attention_cases(seed: int = 0, shapes=((4, 4, 6, 6, 5, 3), (4, 3, 6, 5, 4, 2),
                                                  (2, 7, 3, 8, 4, 6, 5))):
    """Seeded cases; each shape is (*batch, n, m, d_y, d_x, d_k, d_v)."""
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for *batch, n, m, d_y, d_x, d_k, d_v in shapes:
        cases.append(dict(Y=_randn(gen, *batch, n, d_y), X=_randn(gen, *batch, m, d_x),
                          W_q=_randn(gen, d_y, d_k), W_k=_randn(gen, d_x, d_k), W_v=_randn(gen, d_x, d_v)))
    return cases


@answer
def cross_attention_reference(Y, X, W_q, W_k, W_v):
    return ref.cross_attention(Y, X, W_q, W_k, W_v)


def check_cross_attention(fn):
    """Notebook 02: ``fn(Y, X, W_q, W_k, W_v)`` -> ``(output (n x d_v), weights (n x m))``."""
    return run_check("cross_attention", fn, cross_attention_reference, cross_attention_cases(),
                     mistakes=CROSS_ATTENTION_MISTAKES, forbidden=FORBIDDEN)


# --- notebook 02, exercise 2: token_maps(probs, height, width) --------------------------------

TOKEN_MAPS_MISTAKES = (
    Mistake("sum_over_heads", lambda probs, height, width: probs.sum(0).T.reshape(-1, height, width),
            "you summed the heads: average them (mean over dim 0) so that each pixel's weights still "
            "sum to 1 over the tokens"),
    Mistake("first_head_only", lambda probs, height, width: probs[0].T.reshape(-1, height, width),
            "you kept only the first head: average over all heads"),
    Mistake("no_transpose", lambda probs, height, width: probs.mean(0).reshape(-1, height, width),
            "your maps mix pixels and tokens: a token's map is a COLUMN of the (pixels x tokens) "
            "matrix; transpose to (tokens, pixels) before reshaping"),
    Mistake("column_major", lambda probs, height, width:
            probs.mean(0).T.reshape(-1, width, height).transpose(-2, -1),
            "your maps are transposed: pixel p sits at row p // width, column p % width (row-major), "
            "so reshape to (tokens, height, width)"),
)


def token_maps_cases(seed: int = 0, shapes=((2, 4, 4, 5), (4, 2, 3, 6), (1, 8, 8, 16))):
    """Seeded cases; each shape is (heads, height, width, n_tokens); rows are distributions."""
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for heads, h, w, t in shapes:
        probs = _randn(gen, heads, h * w, t, scale=2.0).softmax(-1)  # (heads, n_pixels, n_tokens)
        cases.append(dict(probs=probs, height=h, width=w))
    return cases


def check_token_maps(fn):
    """Notebook 02: ``fn(probs (heads, pixels, tokens), height, width)`` -> (tokens, height, width)."""
    return run_check("token_maps", fn, ref.token_maps, token_maps_cases(), mistakes=TOKEN_MAPS_MISTAKES, forbidden=FORBIDDEN)
