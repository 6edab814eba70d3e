"""Scaled dot-product attention, multi-head attention and cross-attention, from the formulas.

Taught in notebook 01 (attention, multi-head) and notebook 02 (cross-attention, and cross-attention
inside the shipped model's UNet). Notation of the course:

* queries ``Q`` (n_query x d_k), keys ``K`` (n_key x d_k), values ``V`` (n_key x d_v);
* scores ``S = Q K^T / sqrt(d_k)``, i.e. ``s_ij = k_j^T q_i / sqrt(d_k)``;
* weights ``A = softmax(S)`` row by row (each query's weights sum to 1 over the keys);
* output ``Y = A V``, i.e. ``y_i = sum_j a_ij v_j``.

Every function accepts any number of leading batch dimensions (batch, heads, ...).
"""
from __future__ import annotations

import dataclasses
import math

import torch

__all__ = ["scaled_dot_product_attention", "self_attention", "cross_attention", "split_heads",
           "merge_heads", "multi_head_attention", "token_maps", "cross_attention_layers",
           "CrossAttentionRecord", "record_cross_attention"]


def _check_qkv(q, k, v) -> None:
    for name, t in (("queries", q), ("keys", k), ("values", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}; "
                            f"convert with torch.as_tensor(...)")
        if t.ndim < 2:
            raise ValueError(f"{name} must have shape (..., tokens, features), got {tuple(t.shape)}; "
                             f"add a token axis with .unsqueeze(0) for a single vector")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"queries and keys must have the same width d_k to take dot products: "
                         f"queries {tuple(q.shape)}, keys {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"keys and values must come in pairs (same number of tokens): keys "
                         f"{tuple(k.shape)}, values {tuple(v.shape)}")


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(Q K^T / sqrt(d_k)) V`` and the weights ``A`` (notebook 01, the matrix form).

    ``q``: (..., n_query, d_k); ``k``: (..., n_key, d_k); ``v``: (..., n_key, d_v).
    ``mask``: optional boolean tensor broadcastable to (..., n_query, n_key); True where a query may
    attend to a key (torch's convention). Returns ``(output, weights)`` with shapes
    (..., n_query, d_v) and (..., n_query, n_key); each row of ``weights`` sums to 1.
    """
    _check_qkv(q, k, v)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., n_query, n_key)
    if mask is not None:
        scores = scores.masked_fill(~_as_bool_mask(mask, scores.shape), float("-inf"))
    weights = scores.softmax(dim=-1)  # (..., n_query, n_key): a distribution over the keys
    return weights @ v, weights  # (..., n_query, d_v), (..., n_query, n_key)


def _as_bool_mask(mask, shape) -> torch.Tensor:
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be boolean (True = may attend), got dtype {mask.dtype}; "
                        f"use mask.bool() or a comparison such as lengths > positions")
    try:
        mask = mask.expand(shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' "
                         f"shape {tuple(shape)} (..., n_query, n_key)") from None
    if not mask.any(-1).all():
        raise ValueError("a query's mask row is all False: it would attend to nothing (softmax of "
                         "only -inf is NaN); let every query attend to at least one key")
    return mask


def self_attention(x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor,
                   mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-head self-attention of a sequence (notebook 01): Q = X W_q, K = X W_k, V = X W_v.

    ``x``: (..., m, d_model); ``w_q``, ``w_k``: (d_model, d_k); ``w_v``: (d_model, d_v).
    Returns ``(output, weights)``: (..., m, d_v) and (..., m, m).
    """
    return cross_attention(x, x, w_q, w_k, w_v, mask)


def cross_attention(y: torch.Tensor, x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                    w_v: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention (notebook 02): queries from ``y`` (n tokens), keys and values from ``x`` (m).

    Q = Y W_q, K = X W_k, V = X W_v; ``A = softmax(Q K^T / sqrt(d_k))`` is n x m, row t being
    target token t's distribution over the source tokens. ``y``: (..., n, d_y); ``x``:
    (..., m, d_x); ``w_q``: (d_y, d_k); ``w_k``: (d_x, d_k); ``w_v``: (d_x, d_v).
    Returns ``(output, weights)``: (..., n, d_v) and (..., n, m).
    """
    for name, w, src, src_name in (("w_q", w_q, y, "y"), ("w_k", w_k, x, "x"), ("w_v", w_v, x, "x")):
        if w.ndim != 2 or w.shape[0] != src.shape[-1]:
            raise ValueError(f"{name} must have shape ({src.shape[-1]}, d) to multiply {src_name} of "
                             f"shape {tuple(src.shape)}, got {tuple(w.shape)}")
    q, k, v = y @ w_q, x @ w_k, x @ w_v  # (..., n, d_k), (..., m, d_k), (..., m, d_v)
    return scaled_dot_product_attention(q, k, v, mask)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., tokens, heads * d_head) -> (..., heads, tokens, d_head) (notebook 01, multi-head)."""
    if heads < 1 or x.shape[-1] % heads:
        raise ValueError(f"cannot split width {x.shape[-1]} into {heads} heads: the width must be a "
                         f"multiple of the number of heads")
    x = x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)  # (..., tokens, heads, d_head)
    return x.transpose(-3, -2)  # (..., heads, tokens, d_head)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(..., heads, tokens, d_head) -> (..., tokens, heads * d_head): the heads' outputs side by side."""
    x = x.transpose(-3, -2)  # (..., tokens, heads, d_head)
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def multi_head_attention(x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor,
                         w_o: torch.Tensor, heads: int, context: torch.Tensor | None = None,
                         mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-head attention (notebook 01): ``concat_h(softmax(Q_h K_h^T / sqrt(d_head)) V_h) W_o``.

    Queries come from ``x`` (..., n, d_model); keys and values from ``context`` (..., m, d_context),
    which defaults to ``x`` (self-attention). ``w_q``: (d_model, heads * d_head); ``w_k``, ``w_v``:
    (d_context, heads * d_head); ``w_o``: (heads * d_head, d_out). Each head attends with its own
    slice of the projected width. Returns ``(output, weights)``: (..., n, d_out) and
    (..., heads, n, m).
    """
    context = x if context is None else context
    q = split_heads(x @ w_q, heads)  # (..., heads, n, d_head)
    k = split_heads(context @ w_k, heads)  # (..., heads, m, d_head)
    v = split_heads(context @ w_v, heads)  # (..., heads, m, d_head)
    if mask is not None:
        mask = torch.as_tensor(mask).unsqueeze(-3)  # the same mask for every head
    out, weights = scaled_dot_product_attention(q, k, v, mask)  # (..., heads, n, d_head)
    return merge_heads(out) @ w_o, weights  # (..., n, d_out), (..., heads, n, m)


def token_maps(probs: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Each prompt token's attention over the image (notebook 02): (heads, n_pixels, n_tokens) ->
    (n_tokens, height, width).

    Averages the heads, then reads column j of the pixels-by-tokens matrix as an image: pixel
    ``p = row * width + col`` (row-major, as the UNet flattens its feature maps).
    """
    if probs.ndim != 3 or probs.shape[1] != height * width:
        raise ValueError(f"expected probabilities of shape (heads, {height}*{width}={height * width}, "
                         f"n_tokens), got {tuple(probs.shape)}; pick one batch element first, "
                         f"e.g. probs[1] for the conditional half under guidance")
    mean = probs.mean(dim=0)  # (n_pixels, n_tokens)
    return mean.T.reshape(-1, height, width)  # (n_tokens, height, width)


# --- cross-attention inside the UNet (notebook 02) -------------------------------------------

def cross_attention_layers(unet) -> list[str]:
    """Names of a diffusers UNet's cross-attention layers (``...attn2``), in the UNet's order."""
    from .unet_attention import cross_attention_layers as names

    return names(unet)


class _LayerRecorder:
    """An attention control (:mod:`p2p_lab.unet_attention`) that keeps one layer's probabilities,
    recomputed with :func:`scaled_dot_product_attention` in float32, and leaves its output as it is
    (torch's fused attention, exactly what diffusers' default processor computes)."""

    n_uncond, step = 0, 0

    def __init__(self, layer: str, latent_hw):
        self.layer, self.latent_hw = layer, latent_hw
        self.probs: list[torch.Tensor] = []
        self.size = None

    def wants(self, layer) -> bool:
        return layer.name == self.layer

    def attention_batch(self, layer, q, k, v, mask):
        _, probs = scaled_dot_product_attention(q.float(), k.float(), k[..., :1].float())
        self.probs.append(probs.cpu())  # (batch, heads, n_pixels, n_tokens)
        self.size = layer.resolution
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@dataclasses.dataclass
class CrossAttentionRecord:
    """One UNet cross-attention layer's probabilities over one sampling run (notebook 02).

    ``probs``: (steps, batch, heads, n_pixels, n_tokens); under classifier-free guidance the batch
    is (unconditional, conditional). ``size``: the layer's (height, width) in latent pixels.
    """

    layer: str
    probs: torch.Tensor
    size: tuple[int, int]
    tokens: list[str]
    image: object = None  # the generated image (numpy, height x width x 3)

    def maps(self, step: int | None = None, batch: int = -1) -> torch.Tensor:
        """(n_tokens, height, width): heads averaged, at one step or averaged over all steps."""
        probs = self.probs.mean(0) if step is None else self.probs[step]  # (batch, heads, px, tok)
        return token_maps(probs[batch], *self.size)


def record_cross_attention(pipe, prompt: str, layer: str | None = None, *, num_inference_steps: int = 10,
                           guidance_scale: float = 7.5, seed: int = 0) -> CrossAttentionRecord:
    """Sample ``prompt`` with ``pipe`` and record one cross-attention layer's probabilities.

    ``layer``: a name from :func:`cross_attention_layers` (default: the first, at the highest
    resolution). The sampling is the course's loop (:func:`p2p_lab.ldm.sample`, the image
    ``pipe(...)`` gives for the seed) with a recording control on that layer
    (:func:`p2p_lab.unet_attention.hooked`: diffusers' ``unet.set_attn_processor``, the original
    processors restored afterwards, even on error).
    """
    from . import ldm
    from .unet_attention import default_latent_hw

    names = cross_attention_layers(pipe.unet)
    layer = names[0] if layer is None else layer
    if layer not in names:
        raise ValueError(f"{layer!r} is not a cross-attention layer of this UNet; choose one of {names}")
    recorder = _LayerRecorder(layer, default_latent_hw(pipe))
    out = ldm.sample(pipe, prompt, seed, num_inference_steps, guidance_scale, control=recorder)
    ids = ldm.tokenize(pipe.tokenizer, prompt)[0].tolist()
    return CrossAttentionRecord(layer, torch.stack(recorder.probs), recorder.size,
                                pipe.tokenizer.convert_ids_to_tokens(ids), out.numpy()[0])
