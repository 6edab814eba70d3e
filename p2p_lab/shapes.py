"""The shapes world: procedural scenes, their captions, and a scorer that reads images back.

Taught in notebooks 02, 04 and 05; the shipped model (``data/shapes-ldm``) is trained on it.

A scene is one or more flat shapes on a solid background. The world has *layout priors*, the way
object identity shapes composition in photographs (a cat and a car sit differently in a picture):

* the shape decides the height: circles sit high, triangles in the middle, squares low;
* the object colour decides the horizontal place: each colour has its own preferred column.

So changing one word under a fixed seed moves the object, which is exactly the failure that
Prompt-to-Prompt fixes. Every image comes with its ground truth (attributes, centre, mask), and
:func:`read_image` reads an image (rendered or generated) back into the same terms so that edits
can be scored exactly.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 160, 60),
    "turquoise": (50, 205, 200),  # the one colour word that tokenizes to two tokens
    "blue": (40, 70, 225),
    "purple": (140, 50, 180),
}
SHAPES: list[str] = ["circle", "square", "triangle"]
SIZES: list[str] = ["small", "big"]

IMAGE_SIZE = 32
# Half-extent of a shape in pixels, per size word (uniform in the range).
RADIUS = {"small": (4.5, 5.5), "big": (6.75, 7.75)}
# Layout priors: mean centre row per shape, mean centre column per colour (pixels, 32x32 image).
# The spreads are wide on purpose: the priors must move an object when one word changes under a
# fixed seed (so Prompt-to-Prompt has something to fix), yet overlap enough that a circle where a
# triangle stood is still a likely picture (so an edit that keeps the place has a place to keep).
# With spreads of 1.5 px the model never saw a circle at a triangle's height and injected
# attention could not hold the layout.
SHAPE_ROW = {"circle": 10.0, "triangle": 16.0, "square": 22.0}
COLOR_COLUMN = {c: 8.0 + 16.0 * i / (len(COLORS) - 1) for i, c in enumerate(COLORS)}
ROW_STD, COLUMN_STD = 3.0, 3.0
SIZE_SPLIT = 6.3  # a read-back radius above this counts as "big"


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
    """One object: what it is and where it sits (centre in pixels, ``radius`` = half-extent)."""

    shape: str
    color: str
    size: str
    center: tuple[float, float]  # (row, column)
    radius: float


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeSpec, ...]
    background: str


def _check_name(kind: str, name: str, allowed) -> None:
    if name not in allowed:
        raise ValueError(f"unknown {kind} {name!r}; the shapes world knows {sorted(allowed)}")


def sample_object(rng: np.random.Generator, shape=None, color=None, size=None,
                  background=None) -> ShapeSpec:
    """Draw one object from the world's priors; any attribute can be fixed by name."""
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    colors = [c for c in COLORS if c != background]
    color = color or colors[rng.integers(len(colors))]
    size = size or SIZES[rng.integers(len(SIZES))]
    _check_name("shape", shape, SHAPES)
    _check_name("colour", color, COLORS)
    _check_name("size", size, SIZES)
    radius = float(rng.uniform(*RADIUS[size]))
    lo, hi = radius + 1.0, IMAGE_SIZE - 1.0 - radius
    row = float(np.clip(rng.normal(SHAPE_ROW[shape], ROW_STD), lo, hi))
    col = float(np.clip(rng.normal(COLOR_COLUMN[color], COLUMN_STD), lo, hi))
    return ShapeSpec(shape, color, size, (row, col), radius)


def sample_scene(rng: np.random.Generator, shape=None, color=None, size=None,
                 background=None) -> Scene:
    """A one-object scene (the world the shipped model is trained on)."""
    if background is not None:
        _check_name("background colour", background, COLORS)
    if color is not None and color == background:
        raise ValueError(f"object colour and background are both {color!r}; pick two different colours")
    obj = sample_object(rng, shape, color, size, background)
    if background is None:
        bgs = [c for c in COLORS if c != obj.color]
        background = bgs[rng.integers(len(bgs))]
    return Scene((obj,), background)


def shape_mask(spec: ShapeSpec, size: int = IMAGE_SIZE, supersample: int = 4) -> np.ndarray:
    """Soft coverage in [0, 1] of one shape, shape (size, size), anti-aliased by supersampling."""
    n = size * supersample
    coords = (np.arange(n) + 0.5) / supersample
    y, x = np.meshgrid(coords, coords, indexing="ij")
    (cy, cx), r = spec.center, spec.radius
    if spec.shape == "circle":
        inside = (y - cy) ** 2 + (x - cx) ** 2 <= r ** 2
    elif spec.shape == "square":
        inside = (np.abs(y - cy) <= r) & (np.abs(x - cx) <= r)
    elif spec.shape == "triangle":  # upright, apex at the top, base at the bottom
        top, bottom = cy - r, cy + r
        half = r * (y - top) / (2 * r)
        inside = (y >= top) & (y <= bottom) & (np.abs(x - cx) <= half)
    else:
        raise ValueError(f"unknown shape {spec.shape!r}; the shapes world knows {SHAPES}")
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def render(scene: Scene, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Image (size, size, 3) uint8 and masks (n_objects, size, size) bool of a scene."""
    img = np.empty((size, size, 3), np.float64)
    img[:] = COLORS[scene.background]
    masks = []
    for obj in scene.objects:
        cover = shape_mask(obj, size)[..., None]  # (H, W, 1)
        img = img * (1 - cover) + np.asarray(COLORS[obj.color], np.float64) * cover
        masks.append(cover[..., 0] >= 0.5)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), np.stack(masks)


# ---------------------------------------------------------------- captions

def caption(scene: Scene, with_size: bool = False, with_color: bool = True,
            with_background: bool = True) -> str:
    """'a [size] [colour] shape [and a ...] [on a colour background]'.

    The base form is ``a red circle on a blue background``; the size word, the colour and the
    background clause are optional parts of the grammar (phrase insertion needs them).
    """
    parts = []
    for obj in scene.objects:
        words = ["a"] + ([obj.size] if with_size else []) + ([obj.color] if with_color else [])
        parts.append(" ".join(words + [obj.shape]))
    text = " and ".join(parts)
    if with_background:
        text += f" on a {scene.background} background"
    return text


def random_caption(scene: Scene, rng: np.random.Generator, p_size=0.4, p_color=0.9,
                   p_background=0.85) -> str:
    """A caption with the optional parts drawn at random (how the model is trained)."""
    return caption(scene, with_size=bool(rng.random() < p_size),
                   with_color=bool(rng.random() < p_color),
                   with_background=bool(rng.random() < p_background))


_OBJ_RE = re.compile(r"^a (?:(?P<size>\w+) )?(?:(?P<color>\w+) )?(?P<shape>\w+)$")


def parse_caption(text: str) -> dict:
    """Attributes a caption asks for: {'objects': [{'shape', 'color', 'size'}], 'background'}.

    Attributes a caption leaves out are ``None``. Raises ValueError for a caption outside the
    world's grammar, naming the word it did not understand.
    """
    text = " ".join(text.strip().lower().split())
    background = None
    m = re.match(r"^(?P<objs>.+) on a (?P<bg>\w+) background$", text)
    if m:
        text, background = m.group("objs"), m.group("bg")
        _check_name("background colour", background, COLORS)
    objects = []
    for part in text.split(" and "):
        words = part.split()
        if not words or words[0] != "a" or words[-1] not in SHAPES or len(words) > 4:
            raise ValueError(f"cannot parse {part!r}: expected 'a [small|big] [colour] shape' "
                             f"with shape in {SHAPES}")
        obj = {"shape": words[-1], "color": None, "size": None}
        for w in words[1:-1]:
            if w in SIZES and obj["size"] is None and obj["color"] is None:
                obj["size"] = w
            elif w in COLORS and obj["color"] is None:
                obj["color"] = w
            else:
                raise ValueError(f"unexpected word {w!r} in {part!r}: sizes are {SIZES}, "
                                 f"colours {list(COLORS)}")
        objects.append(obj)
    return {"objects": objects, "background": background}


# ---------------------------------------------------------------- reading images back

@dataclasses.dataclass
class ObjectReading:
    shape: str
    color: str
    size: str
    mask: np.ndarray  # (H, W) bool
    centroid: tuple[float, float]  # (row, column)
    radius: float


@dataclasses.dataclass
class Reading:
    background: str
    objects: list[ObjectReading]


_PALETTE = np.array(list(COLORS.values()), np.float64)  # (n_colors, 3)
_NAMES = list(COLORS)


def nearest_color(pixels: np.ndarray) -> np.ndarray:
    """Index into COLORS of the nearest named colour for each RGB pixel (..., 3)."""
    d = ((pixels[..., None, :].astype(np.float64) - _PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


def _classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """Best-matching shape (IoU with an ideal circle, square or triangle inscribed in the mask's
    bounding box) and its half-extent from the area."""
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    y, x = np.mgrid[top:bottom, left:right] + 0.5  # pixel centres inside the box
    v = (y - (top + bottom) / 2.0) / ((bottom - top) / 2.0)  # in [-1, 1], down
    u = (x - (left + right) / 2.0) / ((right - left) / 2.0)  # in [-1, 1], right
    ideal = {"square": np.ones_like(u, bool), "circle": u ** 2 + v ** 2 <= 1.0,
             "triangle": np.abs(u) <= (v + 1.0) / 2.0}
    box = mask[top:bottom, left:right]
    iou = {k: (m & box).sum() / float((m | box).sum()) for k, m in ideal.items()}
    best = max(iou, key=iou.get)
    area = float(mask.sum())  # half-extent r from the area: square 4r^2, circle pi r^2, triangle 2r^2
    return best, float(np.sqrt(area / {"square": 4.0, "circle": np.pi, "triangle": 2.0}[best]))


def read_image(image, min_pixels: int = 6) -> Reading:
    """Read an RGB image (H, W, 3; uint8, or float in [0, 1]) back into background and objects.

    The background is the most common named colour on the border; every connected region of
    another colour with at least ``min_pixels`` pixels is an object, read for colour (majority),
    shape (best IoU with an ideal circle, square or triangle inscribed in its box), size, mask and centroid.
    """
    from scipy import ndimage

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"read_image expects an (H, W, 3) RGB image, got shape {img.shape}")
    if max(img.shape[:2]) > 4 * IMAGE_SIZE:
        raise ValueError(f"the shapes-world scorer reads the shapes world's small pictures ({IMAGE_SIZE}x"
                         f"{IMAGE_SIZE}); this one is {img.shape[0]}x{img.shape[1]}, as Stable Diffusion "
                         f"draws them, and a photograph has no ground truth to read. Score only on the "
                         f"shipped model (p2p_lab.model.model_kind(pipe) == 'shapes')")
    if img.dtype != np.uint8:
        img = np.clip(np.asarray(img, np.float64) * 255.0, 0, 255)
    labels = nearest_color(img)  # (H, W)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    bg = int(np.bincount(border, minlength=len(_NAMES)).argmax())
    fg = labels != bg
    comps, n = ndimage.label(fg)
    objects = []
    for k in range(1, n + 1):
        mask = comps == k
        if mask.sum() < min_pixels:
            continue
        color = _NAMES[int(np.bincount(labels[mask], minlength=len(_NAMES)).argmax())]
        shape, radius = _classify_shape(mask)
        rows, cols = np.nonzero(mask)
        objects.append(ObjectReading(shape, color, "big" if radius > SIZE_SPLIT else "small",
                                     mask, (float(rows.mean()), float(cols.mean())), radius))
    objects.sort(key=lambda o: -o.mask.sum())
    return Reading(_NAMES[bg], objects)


def score_caption(image, text: str) -> dict:
    """Does an image show what a one-object caption asks? Returns per-attribute booleans.

    Keys: 'one_object', 'shape', 'color', 'size', 'background' (None where the caption leaves
    that attribute free), and 'all' (every asked attribute right and exactly one object).
    """
    want = parse_caption(text)
    if len(want["objects"]) != 1:
        raise ValueError("score_caption scores one-object captions; use read_image for scenes")
    w = want["objects"][0]
    got = read_image(image)
    obj = got.objects[0] if got.objects else None
    res = {"one_object": len(got.objects) == 1,
           "shape": obj is not None and obj.shape == w["shape"],
           "color": None if w["color"] is None else (obj is not None and obj.color == w["color"]),
           "size": None if w["size"] is None else (obj is not None and obj.size == w["size"]),
           "background": None if want["background"] is None else got.background == want["background"]}
    res["all"] = all(v for v in res.values() if v is not None)
    return res
