"""The one place a UNet's attention is hooked: its attention layers, one processor, one context.

Taught in notebooks 02 (recording a layer's cross-attention), 04 (the UNet's attention layers) and
05 (Prompt-to-Prompt). Every client of a UNet's attention goes through here: the recorder of
notebook 02 (:func:`p2p_lab.attention.record_cross_attention`), the attention store and every
Prompt-to-Prompt edit (:mod:`p2p_lab.p2p`) and training's attention loss (:mod:`p2p_lab.train`).

* :class:`LayerInfo`: the facts of one attention layer (name, place, heads, self or cross, and the
  query grid it sees at a given latent size); :func:`attention_layers` lists them for a pipeline.
* :class:`AttentionHook`: a diffusers attention processor that honours ``AttnProcessor2_0``'s
  contract (4-D inputs, group norm, cross norm, residual, rescaling) and asks a *control* what to
  do at each layer; with nothing asked it computes exactly what ``AttnProcessor2_0`` computes.
* :func:`hooked`: installs one hook per layer with diffusers' ``unet.set_attn_processor`` for a
  ``with`` block and puts the original processors back afterwards, even on error.

The control protocol (:class:`Control` is a base class with the defaults):

* ``n_uncond``: rows of the unconditional half of a classifier-free-guidance batch (0 without
  guidance); ``latent_hw``: the latent size the UNet runs at; ``step``: the sampling-loop index
  (set by :func:`p2p_lab.ldm.denoise` before each UNet call);
* ``wants(layer) -> bool``: is the control interested in this layer at this step? If not, the layer
  attends with torch's fused ``scaled_dot_product_attention``, as ``AttnProcessor2_0`` does;
* ``attention_batch(layer, q, k, v, mask) -> out or None`` (optional): every row of the batch, e.g.
  with fused attention on edited queries, keys and values (it may write into q, k and v: they were
  made for this call); None hands over to
* ``attention(layer, q, k, v, mask) -> out`` for the conditional rows (the unconditional half is
  never edited); :func:`attend_all` computes their probabilities A = softmax(Q K^T / sqrt(d)) in
  float32 (also under fp16) and passes them through ``attend(layer, probs) -> probs``.

Shapes: q (batch, heads, n_query, head_dim), k and v (batch, heads, n_key, head_dim).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import weakref

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------- which attention layers a UNet has

@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One attention layer. ``name`` is the processor key without ``.processor``."""

    name: str
    place: str  # "down" | "mid" | "up"
    heads: int
    is_cross: bool
    resolution: tuple[int, int] | None = None  # (rows, cols) of the layer's query grid
    head_dim: int | None = None  # channels per head of the queries and keys
    n_key: int | None = None  # what the queries attend over: latent pixels (self) or prompt tokens (cross)

    @property
    def kind(self) -> str:
        return "cross" if self.is_cross else "self"

    @property
    def res(self) -> int:
        """The larger side of the query grid (the usual '16x16 maps' number)."""
        return max(self.resolution)

    @property
    def n_query(self) -> int:
        """Latent pixels of the layer's grid: one query each."""
        return self.resolution[0] * self.resolution[1]

    def at(self, resolution: tuple[int, int], n_key: int | None = None) -> "LayerInfo":
        return dataclasses.replace(self, resolution=tuple(resolution), n_key=n_key)


def place_of(name: str) -> str:
    for prefix, place in (("down_blocks", "down"), ("mid_block", "mid"), ("up_blocks", "up")):
        if name.startswith(prefix):
            return place
    return "other"


_STATIC: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def static_layers(unet) -> dict[str, LayerInfo]:
    """LayerInfo (without resolution) for every attention module of a UNet, keyed by name.

    Read once per UNet (a walk over every module) and remembered; a copy is returned.
    """
    from diffusers.models.attention_processor import Attention

    if unet not in _STATIC:
        out = {}
        for name, module in unet.named_modules():
            if isinstance(module, Attention):
                out[name] = LayerInfo(name, place_of(name), module.heads, module.is_cross_attention,
                                      head_dim=module.inner_dim // module.heads)
        _STATIC[unet] = out
    return dict(_STATIC[unet])


def grid_of(n_query: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) grid of ``n_query`` positions inside a latent of size ``latent_hw``.

    UNet downsamplers halve each side, rounding up (stride-2 convolution with padding 1).
    """
    h, w = latent_hw
    while h * w > n_query and (h > 1 or w > 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != n_query:
        raise ValueError(f"an attention layer sees {n_query} positions, which is no downsampling "
                         f"of the {latent_hw} latent; pass the latent size the UNet is run at")
    return h, w


def require_cross_attention(unet) -> None:
    """Raise a clear error for a UNet without cross-attention (nothing to edit)."""
    if not any(layer.is_cross for layer in static_layers(unet).values()):
        raise ValueError("this pipeline's UNet has no cross-attention layers, so prompts do not "
                         "enter through attention maps and Prompt-to-Prompt cannot edit it; use a "
                         "text-conditioned UNet2DConditionModel (e.g. StableDiffusionPipeline)")


# ---------------------------------------------------------------- the hook and its control

class Control:
    """The defaults of the control protocol (see the module docstring): interested in nothing."""

    n_uncond = 0
    step = 0

    def __init__(self, latent_hw=None):
        self.latent_hw = latent_hw

    def wants(self, layer: "LayerInfo") -> bool:
        return False


class AttentionHook:
    """Diffusers attention processor for one layer; behaves like AttnProcessor2_0 when idle."""

    def __init__(self, layer: LayerInfo, control):
        self.layer = layer
        self.control = control
        self._at = {}  # (n_query, n_key, latent_hw) -> LayerInfo with its resolution

    def layer_at(self, n_query: int, n_key: int, latent_hw) -> LayerInfo:
        key = (n_query, n_key, tuple(latent_hw))
        if key not in self._at:
            self._at[key] = self.layer.at(grid_of(n_query, latent_hw), n_key)
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
        q, k, v, mask = project_qkv(attn, hidden_states, encoder_hidden_states, attention_mask)
        layer = self.layer_at(q.shape[2], k.shape[2], self.control.latent_hw)
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


def project_qkv(attn, x, context, attention_mask):
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
def hooked(unet, control):
    """Install an AttentionHook asking ``control`` on every attention layer of ``unet`` for the ``with`` block.

    The original processors (whatever they were) are restored afterwards, also on error.
    """
    require_cross_attention(unet)
    infos = static_layers(unet)
    modules = {name: unet.get_submodule(name) for name in infos}
    original = {name: m.processor for name, m in modules.items()}
    unet.set_attn_processor({f"{name}.processor": AttentionHook(info, control) for name, info in infos.items()})
    try:
        yield control
    finally:  # each layer gets its own processor back (diffusers' Attention.set_processor)
        for name, m in modules.items():
            m.set_processor(original[name])


# ---------------------------------------------------------------- the layers at a latent size

class _Probe(Control):
    """A control that only notes each layer with its resolution."""

    def __init__(self, latent_hw):
        super().__init__(latent_hw)
        self.layers: dict[str, LayerInfo] = {}

    def wants(self, layer):
        self.layers.setdefault(layer.name, layer)
        return False


_LAYER_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def attention_layers(pipe, latent_hw: tuple[int, int] | None = None) -> list[LayerInfo]:
    """Every attention layer of ``pipe.unet`` in call order, with its query grid at ``latent_hw``
    (default: the UNet's sample size) and what it attends over (``n_key``).

    Found by one UNet call on zeros (batch 1) with the prompt length of ``pipe.tokenizer``,
    remembered per UNet and latent size.
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
        with hooked(unet, probe), torch.no_grad():
            unet(x, 999, encoder_hidden_states=ctx)
        memo[latent_hw] = list(probe.layers.values())
    return memo[latent_hw]


def cross_attention_layers(unet) -> list[str]:
    """Names of a UNet's cross-attention layers (``...attn2``), in the UNet's order."""
    return [name for name, layer in static_layers(unet).items() if layer.is_cross]


def default_latent_hw(pipe) -> tuple[int, int]:
    """The latent (rows, cols) the UNet was configured for (64 x 64 for SD v1 at 512 px)."""
    size = pipe.unet.config.sample_size
    return (size, size) if isinstance(size, int) else tuple(size)
