"""How an edit is scored in the shapes world: what moved, what changed, what should not have.

Taught in notebooks 04 (the fixed-seed baseline, measured) and 05 (Prompt-to-Prompt, measured);
the benchmarks (``benchmarks/p2p_eval.py``, ``benchmarks/model_quality.py``) score with the same
functions. Every picture is read back by the shapes world's scorer (:func:`p2p_lab.shapes.read_image`),
so these numbers exist only for the shipped model: a photograph has no ground truth to read.

Images are (H, W, 3) float arrays in [0, 1] (or uint8).
"""
from __future__ import annotations

import numpy as np

from . import shapes

PSNR_CAP = 60.0  # dB: identical regions score this instead of infinity


def _reading(image_or_reading):
    return image_or_reading if isinstance(image_or_reading, shapes.Reading) else shapes.read_image(image_or_reading)


def main_object(image_or_reading):
    """The largest object the scorer reads in a picture (it lists them largest first), or None."""
    objects = _reading(image_or_reading).objects
    return objects[0] if objects else None


def centroid_shift(a, b) -> float:
    """Pixels between the main objects' centroids of two pictures (or readings, or objects):
    sqrt((y_a - y_b)^2 + (x_a - x_b)^2); nan where either picture has no object."""
    oa = a if isinstance(a, shapes.ObjectReading) else main_object(a)
    ob = b if isinstance(b, shapes.ObjectReading) else main_object(b)
    if oa is None or ob is None:
        return float("nan")
    return float(np.hypot(*np.subtract(oa.centroid, ob.centroid)))


def pixel_change(a, b) -> float:
    """Mean absolute difference per pixel and channel between two pictures in [0, 1]."""
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def psnr(a, b, region=None, cap: float = PSNR_CAP) -> float | None:
    """10 log10(1 / MSE) in dB over ``region`` (an (H, W) bool mask; all pixels when None), images
    in [0, 1]; None for an empty region, ``cap`` for identical pixels."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    region = np.ones(a.shape[:2], bool) if region is None else np.asarray(region, bool)
    if region.sum() == 0:
        return None
    mse = float(((a - b) ** 2)[region].mean())
    return cap if mse == 0 else min(cap, 10 * np.log10(1.0 / mse))


def object_mask(image, grow: int = 3) -> np.ndarray | None:
    """The main object's pixels, grown by ``grow`` pixels (the mask a mask-based edit is handed),
    or None where the scorer finds no object."""
    from scipy import ndimage

    obj = main_object(image)
    if obj is None:
        return None
    return ndimage.binary_dilation(obj.mask, iterations=grow) if grow else obj.mask


def edit_correct(image, prompt: str) -> bool:
    """Does the picture show everything a one-object prompt asks (:func:`p2p_lab.shapes.score_caption`)?"""
    return bool(shapes.score_caption(image, prompt)["all"])


def map_correlation(a, b) -> float:
    """Pearson correlation of two attention maps (any equal shapes), e.g. a word's map at one step
    against its map at the last step."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def object_measures(image) -> dict:
    """What re-weighting a word can change, read off a picture: the main object's ``radius`` and
    ``area`` (pixels), ``hue`` (degrees, of its mean colour) and ``shading`` (the scorer's strength of
    its tint-to-shade span, 0 when flat), and the background's ``bg_hue`` and ``spots`` (the share of
    it that reads as light spots); nan where no object is found."""
    import colorsys

    img = np.asarray(image, np.float64)
    r = _reading(img)
    obj = main_object(r)
    hue = lambda rgb: 360.0 * colorsys.rgb_to_hsv(*np.clip(rgb, 0, 1))[0]  # noqa: E731
    if obj is None:
        return {"radius": float("nan"), "area": float("nan"), "hue": float("nan"), "shading": float("nan"),
                "bg_hue": hue(img.reshape(-1, 3).mean(0)), "spots": float(r.spots)}
    return {"radius": float(obj.radius), "area": float(obj.mask.sum()), "hue": hue(img[obj.mask].mean(0)),
            "shading": float(obj.shading), "bg_hue": hue(img[~obj.mask].mean(0)), "spots": float(r.spots)}


def describe(image, styles: bool = True) -> str:
    """What the scorer reads, in two short lines: "red circle" / "on blue", with the appearance
    words where it reads them ("shaded red circle" / "on spotted blue") unless ``styles`` is False
    (for a model that never learnt them)."""
    r = _reading(image)
    obj = main_object(r)
    style, bg_style = (obj.style if obj is not None else None, r.background_style) if styles else (None, None)
    what = " ".join(w for w in (style, obj.color, obj.shape) if w) if obj is not None else "no object"
    return f"{what}\non {' '.join(w for w in (bg_style, r.background) if w)}"


def centre_square(shape: tuple[int, int]) -> np.ndarray:
    """An (H, W) mask of the picture's central half: the stand-in mask where nothing can be read."""
    h, w = shape
    m = np.zeros((h, w), bool)
    m[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = True
    return m


class EditScores:
    """The metrics above for one pipeline: numbers on the shipped model, nan (or nothing) on Stable
    Diffusion, whose photographs have no ground truth to read. Notebooks 05 and 06 score with it."""

    def __init__(self, pipe):
        from .model import knows_appearance_words, model_kind

        self.readable = model_kind(pipe) == "shapes"
        self.styles = self.readable and knows_appearance_words(pipe)

    def shift(self, a, b) -> float:
        return centroid_shift(a, b) if self.readable else float("nan")

    def correct(self, image, prompt: str) -> float:
        return float(edit_correct(image, prompt)) if self.readable else float("nan")

    def describe(self, image) -> str:
        return describe(image, self.styles) if self.readable else ""

    def object_mask(self, image, grow: int = 3) -> np.ndarray:
        """The main object's pixels, grown by ``grow``; the central half where none can be read."""
        found = object_mask(image, grow) if self.readable else None
        return centre_square(np.asarray(image).shape[:2]) if found is None else found
