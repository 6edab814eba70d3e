"""Local blending: keep the source's latents outside the region the chosen words attend to.

Taught in notebook 05. After each step from ``start`` on, the words' cross-attention maps (each
layer's own resolution, upsampled to the latent) are averaged, dilated, normalised by their
maximum and thresholded into a mask m_k (the union of the source's and target k's masks);
then z*_k <- z + m_k (.) (z*_k - z). Mask-based editing (:func:`~p2p_lab.p2p.sampling.mask_blend`)
does the same with a mask given in advance.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from .align import token_indices


@dataclasses.dataclass
class LocalBlend:
    """Options of a local blend. ``words``: the words whose attention defines the editable region."""

    words: list[str]
    threshold: float = 0.3  # of the normalised map (max = 1)
    start: float = 0.2  # fraction of steps before the first blend
    resolutions: tuple[int, ...] | None = None  # None: layers between a quarter and half the latent size
    dilate: int = 1  # max-pool radius in latent pixels

    def __post_init__(self):
        self.words = [self.words] if isinstance(self.words, str) else list(self.words)
        for name in ("threshold", "start"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"LocalBlend {name} = {v} is outside [0, 1]")
        if not self.words:
            raise ValueError("LocalBlend needs at least one word")

    def state(self, tokenizer, prompts, layers, latent_hw, num_steps) -> "BlendState":
        """What collects the words' maps and blends the latents during one edit: the words' tokens
        in each prompt, the blended layers' resolutions and the first blended step, resolved here. A
        subclass may return its own object with BlendState's ``wants``, ``add``, ``apply`` and
        ``last_mask`` (notebook 05's Exercise 10 runs a student's blend this way)."""
        return BlendState(self, word_tokens(tokenizer, prompts, self.words),
                          blend_resolutions(layers, latent_hw, self.resolutions), latent_hw,
                          math.floor(round(self.start * num_steps, 6)))


def blend_resolutions(layers, latent_hw, chosen=None) -> set[int]:
    cross = {l.res for l in layers if l.is_cross}
    if chosen is not None:
        missing = set(chosen) - cross
        if missing:
            raise ValueError(f"LocalBlend resolutions {sorted(missing)} have no cross-attention "
                             f"layer; this UNet has {sorted(cross)}")
        return set(chosen)
    side = max(latent_hw)
    mid = {r for r in cross if side / 4 <= r <= side / 2}
    return mid or cross


def word_mask(maps: torch.Tensor, dilate: int, threshold: float) -> torch.Tensor:
    """The local blend's editable region from the words' maps (notebook 05).

    maps: (rows, 1, h, w), each row's attention on the blended words (row 0 the source). Each map is
    dilated (max-pooled over (2 dilate + 1)^2 latent pixels), divided by its maximum and thresholded;
    a target's region is the union of its own and the source's (the old object's place and the
    new one's). Returns (rows - 1, 1, h, w) bool.
    """
    m = maps
    if dilate > 0:
        m = F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)
    m = m / m.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]
    m = m > threshold
    return m[1:] | m[:1]


def word_tokens(tokenizer, prompts, words) -> torch.Tensor:
    """(rows, L): 1 at the tokens of any of ``words`` in each prompt; a word in none of them is an error."""
    mask = torch.zeros(len(prompts), tokenizer.model_max_length)
    for word in words:
        hits = 0
        for r, p in enumerate(prompts):
            try:
                mask[r, token_indices(tokenizer, p, word)] = 1.0
                hits += 1
            except ValueError:
                pass
        if not hits:
            raise ValueError(f"local blend word {word!r} is in none of the prompts {prompts}")
    return mask


class BlendState:
    """Accumulates the words' maps during one step and blends the latents after it.

    tokens (rows, L): the blended words' tokens per prompt; res: the blended layers' resolutions;
    first: the first blended step (see :meth:`LocalBlend.state`)."""

    def __init__(self, opts: LocalBlend, tokens: torch.Tensor, res, latent_hw, first: int):
        self.opts, self.tokens, self.res = opts, tokens, set(res)
        self.latent_hw, self.first = tuple(latent_hw), first
        self.acc, self.count = None, 0
        self.last_mask = None  # the mask of the last blended step, (rows - 1, 1, h, w) bool

    def wants(self, layer, step) -> bool:
        return layer.is_cross and layer.res in self.res and step >= self.first

    def add(self, layer, probs):
        """probs (rows, heads, q, L) -> add the words' map, upsampled to the latent, to the sum."""
        m = (probs.mean(1) * self.tokens.to(probs.device)[:, None, :]).sum(-1)  # (rows, q)
        m = m.reshape(m.shape[0], 1, *layer.resolution)
        m = F.interpolate(m, size=self.latent_hw, mode="bilinear", align_corners=False)
        self.acc = m if self.acc is None else self.acc + m
        self.count += 1

    def mask(self) -> torch.Tensor:
        """(rows - 1, 1, h, w) bool: union of the source's and each target's word region."""
        return word_mask(self.acc / self.count, self.opts.dilate, self.opts.threshold)

    def apply(self, step, x_src, x_tgt):
        """x_src (1, C, h, w), x_tgt (T, C, h, w) -> blended targets."""
        if step < self.first or self.count == 0:
            return x_tgt
        m = self.mask()
        self.acc, self.count, self.last_mask = None, 0, m
        m = m.to(x_tgt.dtype)
        return x_src + m * (x_tgt - x_src)
