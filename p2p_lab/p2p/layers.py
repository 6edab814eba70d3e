"""Which attention layers a UNet has: name, place (down/mid/up), resolution, heads, self vs cross.

Taught in notebook 05 (where the maps come from). Static facts (name, place, heads, self/cross) are
read from the diffusers modules; the spatial resolution is read from the length of the hidden
states a layer actually receives, relative to the latent size, so nothing assumes SD's 64x64
latents or a square image.
"""
from __future__ import annotations

import dataclasses
import math
import weakref


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One attention layer. ``name`` is the processor key without ``.processor``."""

    name: str
    place: str  # "down" | "mid" | "up"
    heads: int
    is_cross: bool
    resolution: tuple[int, int] | None = None  # (rows, cols) of the layer's query grid
    head_dim: int | None = None  # channels per head of the queries and keys

    @property
    def kind(self) -> str:
        return "cross" if self.is_cross else "self"

    @property
    def res(self) -> int:
        """The larger side of the query grid (the usual '16x16 maps' number)."""
        return max(self.resolution)

    def at(self, resolution: tuple[int, int]) -> "LayerInfo":
        return dataclasses.replace(self, resolution=tuple(resolution))


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
