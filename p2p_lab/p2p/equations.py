"""Prompt-to-Prompt's equations (Hertz et al. 2022, Sec. 3) under the names notebook 05 teaches.

The engine computes its edits with these functions (:class:`~p2p_lab.p2p.controls.EditPlan`), and
notebook 05's public checks use them as references. Notation: A, the source's cross-attention maps;
A*, the target's own; both (..., n_pixels, n_tokens), one distribution over the tokens per pixel.

* Algorithm 1's switch: Edit(A_t, A*_t, t) = A*_t if t < tau else A_t (:func:`edit_switch`);
* word alignment: A_hat = A M, M (n_tokens, n_tokens) (:func:`apply_mapper`);
* re-weighting: column j times w_j, no renormalisation (:func:`reweight`);
* per-token, per-step blending: alpha_t (.) A_hat + (1 - alpha_t) (.) A*_t (:func:`alpha_blend`);
* all of it at once, as the engine applies it (:func:`edited_maps`):
  A_edit = alpha (.) ((A M + A* (.) keep) (.) w) + (1 - alpha) (.) A*,
  keep = 1 for the tokens a refinement inserts (they keep their own maps);
* the same edit moved onto the values (:func:`value_maps`): A_edit V = A (P V) + A* (c (.) V) with
  P = M diag(alpha (.) w) and c = alpha (.) keep (.) w + 1 - alpha, so the engine computes it with
  torch's fused attention and never builds a map (:func:`fused_edit`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def edit_switch(A_t: Tensor, A_star_t: Tensor, t: int, tau: int) -> Tensor:
    """Edit(A_t, A*_t, t) of Algorithm 1: A*_t if t < tau, else A_t.

    ``t`` and ``tau`` are timesteps; t counts DOWN from T, so the source's maps A_t are used in the
    first steps (t >= tau) and the target's own maps A*_t afterwards.
    """
    return A_star_t if t < tau else A_t


def apply_mapper(A: Tensor, M: Tensor) -> Tensor:
    """A_hat = A M: the source's maps re-indexed onto the target's tokens.

    A: (..., n_pixels, n_tokens); M: (..., n_tokens, n_tokens), M[i, j] the weight of source token i
    in target token j (leading axes broadcast, e.g. one mapper per target).
    """
    return A @ M  # (..., n_pixels, n_tokens)


def reweight(A: Tensor, weights: Tensor) -> Tensor:
    """Re-weighting: column j of A multiplied by w_j (no renormalisation; w_j = 1 leaves it, w_j < 0
    pushes against the token). weights: (n_tokens,) or broadcastable to A."""
    return A * weights  # (..., n_pixels, n_tokens)


def token_weights(n_tokens: int, token_indices, scale: float, dtype=torch.float32) -> Tensor:
    """w (n_tokens,): ``scale`` at ``token_indices``, 1 elsewhere (one word re-weighted)."""
    w = torch.ones(n_tokens, dtype=dtype)
    w[list(token_indices)] = scale
    return w


def alpha_blend(A_hat: Tensor, A_star: Tensor, alpha: Tensor) -> Tensor:
    """alpha (.) A_hat + (1 - alpha) (.) A*: per token, how much of the source's (mapped) map to keep.

    alpha: (n_tokens,) or broadcastable, 1 where token j still follows the source at this step.
    """
    return alpha * A_hat + (1 - alpha) * A_star  # (..., n_pixels, n_tokens)


def edited_maps(A: Tensor, A_star: Tensor, M: Tensor, keep: Tensor, weights: Tensor, alpha: Tensor) -> Tensor:
    """The maps a target attends with: alpha (.) ((A M + A* (.) keep) (.) w) + (1 - alpha) (.) A*.

    A word swap has keep = 0; a refinement sets keep = 1 on the tokens it inserts (M's column is 0
    there), so they keep their own maps; w = 1 and alpha = 1 give A M, the source's maps mapped.
    """
    hat = reweight(apply_mapper(A, M) + A_star * keep, weights)
    return alpha_blend(hat, A_star, alpha)


def value_maps(M: Tensor, keep: Tensor, weights: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """(P, c) with A_edit V = A (P V) + A* (c (.) V) for :func:`edited_maps`' A_edit.

    A_edit is linear in A and A*, column by column: A_edit = A M diag(alpha w) + A* diag(c), so
    P = M diag(alpha (.) w) (..., n_tokens, n_tokens) and c = alpha (.) keep (.) w + 1 - alpha (..., n_tokens).
    """
    aw = alpha * weights  # (..., n_tokens)
    return M * aw[..., None, :], aw * keep + 1 - alpha


def fused_edit(q_src: Tensor, k_src: Tensor, q: Tensor, k: Tensor, v: Tensor, P: Tensor, c: Tensor,
               mask: Tensor | None = None) -> Tensor:
    """A_edit V = A (P V) + A* (c (.) V) with torch's fused attention: the first term attends with
    the source's queries and keys (A = softmax(Q_src K_src^T / sqrt(d))), the second with the
    target's own. q, k: (..., heads, n, d); v: (..., heads, n_tokens, d); P (..., n_tokens, n_tokens),
    c (..., n_tokens), one per leading (target) row. The engine does the same in place on its batch."""
    pv = torch.einsum("...ij,...hjd->...hid", P, v)  # (..., heads, n_tokens, d): P V
    cv = c[..., None, :, None] * v  # (..., heads, n_tokens, d): c (.) V
    return (F.scaled_dot_product_attention(q_src, k_src, pv, attn_mask=mask)
            + F.scaled_dot_product_attention(q, k, cv, attn_mask=mask))
