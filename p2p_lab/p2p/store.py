"""Recording attention maps while sampling: per token, per step, per layer, with bounded memory.

Taught in notebook 05 (store and show cross-attention maps per token). The store keeps the
head-averaged probabilities of the conditional rows (one row per prompt) of the layers and steps
its filters select; ``per_step=False`` sums over steps instead, so memory does not grow with the
number of steps.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..unet_attention import LayerInfo


@dataclasses.dataclass
class AttentionStore:
    """What to record: latent ``resolutions`` (e.g. (8,)), ``steps`` (loop indices), ``kinds``."""

    resolutions: tuple[int, ...] | None = None  # layer resolutions to keep (None: all)
    steps: tuple[int, ...] | None = None  # sampling-loop step indices to keep (None: all)
    per_step: bool = True  # False: sum over steps (memory independent of the step count)
    kinds: tuple[str, ...] = ("cross",)  # "cross" and/or "self"
    sums: dict = dataclasses.field(default_factory=dict, repr=False)  # (layer, step|None) -> (rows, q, k)
    counts: dict = dataclasses.field(default_factory=dict, repr=False)
    layer_info: dict = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        bad = set(self.kinds) - {"cross", "self"}
        if bad:
            raise ValueError(f"AttentionStore kinds {sorted(bad)} are unknown; use 'cross' and/or 'self'")

    @property
    def layers(self) -> list[LayerInfo]:
        return list(self.layer_info.values())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.sums.values())

    def wants(self, layer: LayerInfo, step: int) -> bool:
        return (layer.kind in self.kinds
                and (self.resolutions is None or layer.res in self.resolutions)
                and (self.steps is None or step in self.steps))

    def add(self, layer: LayerInfo, step: int, probs: torch.Tensor) -> None:
        """Record probs (rows, heads, n_query, n_key), averaged over heads."""
        key = (layer.name, step if self.per_step else None)
        m = probs.detach().float().mean(1)  # (rows, n_query, n_key)
        self.layer_info.setdefault(layer.name, layer)
        self.sums[key] = self.sums[key] + m if key in self.sums else m.clone()
        self.counts[key] = self.counts.get(key, 0) + 1

    def reset(self) -> None:
        self.sums.clear(), self.counts.clear(), self.layer_info.clear()

    def _layer_map(self, name: str, prompt_index: int, step) -> torch.Tensor | None:
        if step is not None and not self.per_step:
            raise ValueError("this store summed over steps (per_step=False); ask for step=None or "
                             "record with AttentionStore(per_step=True)")
        keys = [k for k in self.sums if k[0] == name and (step is None or k[1] == step)]
        if not keys:
            return None
        total = sum(self.sums[k][prompt_index] for k in keys)
        return total / sum(self.counts[k] for k in keys)  # (n_query, n_key)

    def maps(self, prompt_index: int = 0, res: int | None = None, step: int | None = None,
             kind: str = "cross") -> torch.Tensor:
        """Maps (rows, cols, n_key) averaged over heads and layers (and steps if ``step`` is None).

        ``res=None`` averages every recorded layer of ``kind``, each upsampled to the finest grid.
        """
        layers = [l for l in self.layers if l.kind == kind and (res is None or l.res == res)]
        found = [(l, self._layer_map(l.name, prompt_index, step)) for l in layers]
        found = [(l, m) for l, m in found if m is not None]
        if not found:
            have = sorted({(l.kind, l.res) for l in self.layers})
            raise ValueError(f"no {kind} maps recorded at res={res}, step={step}; recorded "
                             f"(kind, res): {have}. Set the store's resolutions/steps/kinds to record them")
        grid = max((l.resolution for l, _ in found), key=lambda hw: hw[0] * hw[1])
        if kind == "self" and len({l.resolution for l, _ in found}) > 1:
            raise ValueError("self-attention maps of different resolutions cannot be averaged; pass res=")
        ups = [_to_grid(m, l.resolution, grid) for l, m in found]
        return torch.stack(ups).mean(0)  # (rows, cols, n_key)

    def word_map(self, tokenizer, prompt: str, word: str, prompt_index: int = 0,
                 res: int | None = None, step: int | None = None) -> torch.Tensor:
        """The attention (rows, cols) on ``word``: its tokens' maps summed."""
        from .align import token_indices

        return self.maps(prompt_index, res, step)[..., token_indices(tokenizer, prompt, word)].sum(-1)

    @staticmethod
    def estimate_nbytes(layers: list[LayerInfo], n_tokens: int, n_prompts: int, num_steps: int,
                        resolutions=None, kinds=("cross",), per_step: bool = True,
                        bytes_per_value: int = 4) -> int:
        """Bytes a store would hold for these layers (head-averaged maps, one row per prompt)."""
        total = 0
        for l in layers:
            if l.kind in kinds and (resolutions is None or l.res in resolutions):
                n_q = l.resolution[0] * l.resolution[1]
                total += n_q * (n_tokens if l.is_cross else n_q)
        return total * n_prompts * (num_steps if per_step else 1) * bytes_per_value


def _to_grid(m: torch.Tensor, hw: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """(n_query, n_key) on grid ``hw`` -> (grid rows, grid cols, n_key), bilinear upsampling."""
    x = m.T.reshape(1, m.shape[1], *hw)  # (1, n_key, h, w)
    if tuple(hw) != tuple(grid):
        x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0)
