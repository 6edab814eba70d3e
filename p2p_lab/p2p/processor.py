"""The attention processor that lets Prompt-to-Prompt see and change attention.

Taught in notebook 05. It is installed with diffusers' own ``unet.set_attn_processor`` inside
:func:`attention_control`, which puts the original processors back afterwards, even on error.
Where the active *control* is not interested in a layer at this step, the layer calls torch's fused
``scaled_dot_product_attention``, exactly like diffusers' default ``AttnProcessor2_0``. Where it
is, the control may compute the whole batch itself with fused attention (``attention_batch``: an
edit moved onto the queries, keys and values, see :class:`~p2p_lab.p2p.controls.EditControl`), or
return None; then the probabilities A = softmax(Q K^T / sqrt(d)) are computed explicitly (in
float32, also under fp16) for the conditional half of a classifier-free-guidance batch. The
unconditional half is never edited.

A control is any object with ``n_uncond`` (rows of the unconditional half, 0 without guidance),
``latent_hw``, ``wants(layer) -> bool`` and ``attention(layer, q, k, v, mask) -> out`` for the
conditional rows (:func:`attend_all` computes every row's probabilities and passes them through
``control.attend(layer, probs) -> probs``), and optionally ``attention_batch(layer, q, k, v, mask)
-> out or None`` for every row (it may write into q, k and v: the processor made them for this call).
"""
from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F

from .layers import LayerInfo, grid_of, require_cross_attention, static_layers


class P2PAttnProcessor:
    """Diffusers attention processor for one layer; behaves like AttnProcessor2_0 when idle."""

    def __init__(self, layer: LayerInfo, control):
        self.layer = layer
        self.control = control
        self._at = {}  # (n_query, latent_hw) -> LayerInfo with its resolution

    def layer_at(self, n_query: int, latent_hw) -> LayerInfo:
        key = (n_query, tuple(latent_hw))
        if key not in self._at:
            self._at[key] = self.layer.at(grid_of(n_query, latent_hw))
        return self._at[key]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        q, k, v, mask = _project(attn, hidden_states, encoder_hidden_states, attention_mask)
        layer = self.layer_at(q.shape[2], self.control.latent_hw)
        if self.control.wants(layer):
            batch_fn = getattr(self.control, "attention_batch", None)
            out = None if batch_fn is None else batch_fn(layer, q, k, v, mask)
            if out is None:
                out = _explicit_attention(q, k, v, mask, layer, self.control)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0)
        b, heads, n_query, head_dim = out.shape
        out = out.transpose(1, 2).reshape(b, n_query, heads * head_dim).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # linear projection, dropout
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _project(attn, x, context, attention_mask):
    """Queries, keys, values split into heads, as AttnProcessor2_0 does. Each (batch, heads, n, d)."""
    batch = x.shape[0]
    n_key = x.shape[1] if context is None else context.shape[1]
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, n_key, batch)
        attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(x)
    if context is None:
        context = x
    elif attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    key, value = attn.to_k(context), attn.to_v(context)
    head_dim = key.shape[-1] // attn.heads
    q, k, v = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return q, k, v, attention_mask


def attention_probs(q, k, mask=None):
    """A = softmax(Q K^T / sqrt(d)) computed in float32. q: (b, h, n_q, d), k: (b, h, n_k, d)."""
    scores = q.float() @ k.float().transpose(-1, -2) * q.shape[-1] ** -0.5  # (b, h, n_q, n_k)
    if mask is not None:
        scores = scores + mask.float()
    return scores.softmax(dim=-1)


def _explicit_attention(q, k, v, mask, layer, control):
    """Fused attention for the unconditional rows; the control computes the conditional rows."""
    u = control.n_uncond
    m_u, m_c = (None, None) if mask is None else (mask[:u], mask[u:])
    out_c = control.attention(layer, q[u:], k[u:], v[u:], m_c)  # (n_cond, heads, n_query, head_dim)
    if u == 0:
        return out_c
    out_u = F.scaled_dot_product_attention(q[:u], k[:u], v[:u], attn_mask=m_u, dropout_p=0.0)
    return torch.cat([out_u, out_c])


def attend_all(control, layer, q, k, v, mask):
    """Explicit probabilities for every row, handed to ``control.attend``, then applied to v."""
    probs = attention_probs(q, k, mask)  # (rows, heads, n_query, n_key) float32
    probs = control.attend(layer, probs)
    return probs.to(v.dtype) @ v


@contextlib.contextmanager
def attention_control(unet, control):
    """Install a P2PAttnProcessor on every attention layer of ``unet`` for the ``with`` block.

    The original processors (whatever they were) are restored afterwards, also on error.
    """
    require_cross_attention(unet)
    infos = static_layers(unet)
    modules = {name: unet.get_submodule(name) for name in infos}
    original = {name: m.processor for name, m in modules.items()}
    unet.set_attn_processor({f"{name}.processor": P2PAttnProcessor(info, control) for name, info in infos.items()})
    try:
        yield control
    finally:  # each layer gets its own processor back (diffusers' Attention.set_processor)
        for name, m in modules.items():
            m.set_processor(original[name])


class _Probe:
    """A control that only notes each layer with its resolution."""

    n_uncond = 0

    def __init__(self, latent_hw):
        self.latent_hw = latent_hw
        self.layers: dict[str, LayerInfo] = {}

    def wants(self, layer):
        self.layers.setdefault(layer.name, layer)
        return False

    def attend(self, layer, probs):  # never called
        return probs


_LAYER_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def attention_layers(pipe, latent_hw: tuple[int, int] | None = None) -> list[LayerInfo]:
    """Every attention layer of ``pipe.unet`` in call order, with its resolution at ``latent_hw``.

    Found by one UNet call on zeros (batch 1), remembered per UNet and latent size.
    """
    unet = pipe.unet
    latent_hw = tuple(latent_hw or default_latent_hw(pipe))
    memo = _LAYER_CACHE.setdefault(unet, {})
    if latent_hw not in memo:
        probe = _Probe(latent_hw)
        p = next(unet.parameters())
        x = torch.zeros(1, unet.config.in_channels, *latent_hw, device=p.device, dtype=p.dtype)
        n_tokens = pipe.tokenizer.model_max_length
        ctx = torch.zeros(1, n_tokens, unet.config.cross_attention_dim, device=p.device, dtype=p.dtype)
        with attention_control(unet, probe), torch.no_grad():
            unet(x, 999, encoder_hidden_states=ctx)
        memo[latent_hw] = list(probe.layers.values())
    return memo[latent_hw]


def default_latent_hw(pipe) -> tuple[int, int]:
    size = pipe.unet.config.sample_size
    return (size, size) if isinstance(size, int) else tuple(size)
