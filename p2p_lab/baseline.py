"""The fixed-seed baseline of editing: the same z_T, another prompt, nothing else shared.

Taught in notebook 04 (what changes when one word changes) and used as the baseline of every edit
in notebooks 05 and 06 (``p2p.fixed_seed``). It lives with the metrics that score it
(:mod:`p2p_lab.metrics`); the sampling is :func:`p2p_lab.ldm.sample`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .ldm import fresh_scheduler, initial_latents, prompt_list, sample
from .metrics import centroid_shift
from .shapes import read_image

__all__ = ["BaselineStats", "fixed_seed", "fixed_seed_baseline"]


@dataclasses.dataclass
class BaselineStats:
    """Same seed, one word changed: what else changed, per seed."""

    seeds: list[int]
    shift: list[float]  # object centroid shift in pixels (nan where an object was not found)
    background_changed: list[bool]
    found: list[bool]  # an object was read in both images
    threshold: float  # pixels of shift that count as "moved"
    source_images: np.ndarray | None = dataclasses.field(default=None, repr=False)  # (n, H, W, 3)
    target_images: np.ndarray | None = dataclasses.field(default=None, repr=False)  # (n, H, W, 3)

    @property
    def moved_fraction(self) -> float:
        """Fraction of seeds (with an object read in both images) whose object moved > threshold."""
        moved = [s > self.threshold for s, f in zip(self.shift, self.found) if f]
        return float(np.mean(moved)) if moved else float("nan")

    @property
    def background_fraction(self) -> float:
        return float(np.mean(self.background_changed))


def fixed_seed(pipe, source: str, targets=(), seed: int = 0, num_inference_steps: int | None = None,
               guidance_scale: float | None = None, progress: bool | None = None) -> np.ndarray:
    """The baseline for editing (notebook 04): ``source`` and every target sampled from the same z_T
    (one draw from ``seed``), nothing else shared. Images (1 + T, H, W, 3) float32 in [0, 1].

    Unset steps and guidance are the model's (:func:`p2p_lab.model.sampling_defaults`), as for
    :func:`p2p_lab.p2p.edit`, so the two are compared at equal settings.
    """
    from .model import sampling_defaults

    default = sampling_defaults(pipe)
    steps = num_inference_steps or default.num_inference_steps
    w = default.guidance_scale if guidance_scale is None else guidance_scale
    prompts = [source, *(prompt_list(targets, "targets") if targets else [])]
    z = initial_latents(pipe, seed, 1, scheduler=fresh_scheduler(pipe, steps)).repeat(len(prompts), 1, 1, 1)
    return sample(pipe, prompts, None, steps, w, latents=z, progress=progress).numpy()


def _images_for_seeds(pipe, prompt: str, seeds: list[int], steps: int, w: float, batch: int) -> np.ndarray:
    out = []
    for i in range(0, len(seeds), batch):
        chunk = seeds[i:i + batch]
        z = torch.cat([initial_latents(pipe, s) for s in chunk])  # (n, C, h, w), one z_T per seed
        out.append(sample(pipe, [prompt] * len(chunk), None, steps, w, latents=z,
                          progress=False).numpy())
    return np.concatenate(out)  # (n, H, W, 3)


def fixed_seed_baseline(pipe, source: str, target: str, seeds, num_inference_steps: int = 20,
                        guidance_scale: float = 7.5, threshold: float = 2.0,
                        batch_size: int = 10, score: bool = True) -> BaselineStats:
    """Sample ``source`` and ``target`` from the same z_T per seed and read both images back.

    Each seed's z_T is the one ``pipe(generator=torch.Generator("cpu").manual_seed(seed))`` uses.
    Uses the shapes-world scorer (:func:`p2p_lab.shapes.read_image`), so the numbers mean
    something for the shipped model only: the centroid shift of the largest object, and whether
    the background colour changed. ``score=False`` (Stable Diffusion) keeps the images only; the
    numbers are then nan / False.
    """
    seeds = [int(s) for s in seeds]
    src, tgt = (_images_for_seeds(pipe, p, seeds, num_inference_steps, guidance_scale, batch_size)
                for p in (source, target))
    shift, bg, found = [], [], []
    for a, b in zip(src, tgt):
        ra, rb = (read_image(a), read_image(b)) if score else (None, None)
        ok = bool(score and ra.objects and rb.objects)
        found.append(ok)
        shift.append(centroid_shift(ra, rb) if ok else float("nan"))
        bg.append(bool(score and ra.background != rb.background))
    return BaselineStats(seeds, shift, bg, found, threshold, src, tgt)
