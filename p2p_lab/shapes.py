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

Two appearance attributes live *inside* a region, the way "fluffy" or "snowy" do in photographs,
each with a strength the scorer reads back as a number (what re-weighting and style insertion act
on; Prompt-to-Prompt holds geometry by design, so size cannot show them):

* ``shaded`` objects: lit from above, the colour runs from a tint at the top to a shade at the
  bottom; the strength is the tint-to-shade span (:data:`SHADE_RANGE`);
* ``spotted`` backgrounds: light spots of the background's colour scattered at random, the
  detail a local blend must protect when an edit elsewhere would disturb it.
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
OBJECT_STYLES: list[str] = ["shaded"]  # appearance words for an object (at most one each)
BACKGROUND_STYLES: list[str] = ["spotted"]  # appearance words for the background
# A shaded object's colour at relative height h (0 top, 1 bottom) is the colour mixed with
# lam = strength * (0.5 - h): toward white for lam > 0 (a tint), toward black for lam < 0 (a shade).
SHADE_RANGE = (0.45, 0.9)  # strength of a shaded object; a plain one has 0
SHADE_SPLIT = 0.25  # a read-back strength above this counts as "shaded"
SPOT_TINT = 0.45  # spots are the background colour mixed this far toward white
SPOT_COUNT = (6, 10)  # spots per spotted background (inclusive range)
SPOT_RADIUS = (1.6, 2.3)
SPOT_SPLIT = 0.025  # share of the background that must read as spots for "spotted"

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
    style: str | None = None  # one of OBJECT_STYLES, or None (flat)
    strength: float = 0.0  # the style's strength (shaded: the tint-to-shade span)


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeSpec, ...]
    background: str
    background_style: str | None = None  # one of BACKGROUND_STYLES, or None (plain)
    spots: tuple[tuple[float, float, float], ...] = ()  # (row, column, radius) of each spot


def _check_name(kind: str, name: str, allowed) -> None:
    if name not in allowed:
        raise ValueError(f"unknown {kind} {name!r}; the shapes world knows {sorted(allowed)}")


def sample_object(rng: np.random.Generator, shape=None, color=None, size=None,
                  background=None, style=None, strength=None) -> ShapeSpec:
    """Draw one object from the world's priors; any attribute can be fixed by name.

    ``style`` is fixed like the rest ("shaded", or "plain" for none); left None, the object is
    flat (the world's styles are drawn by :func:`sample_scene`'s probabilities)."""
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    colors = [c for c in COLORS if c != background]
    color = color or colors[rng.integers(len(colors))]
    size = size or SIZES[rng.integers(len(SIZES))]
    _check_name("shape", shape, SHAPES)
    _check_name("colour", color, COLORS)
    _check_name("size", size, SIZES)
    style = None if style in (None, "plain") else style
    if style is not None:
        _check_name("object style", style, OBJECT_STYLES)
    radius = float(rng.uniform(*RADIUS[size]))
    lo, hi = radius + 1.0, IMAGE_SIZE - 1.0 - radius
    row = float(np.clip(rng.normal(SHAPE_ROW[shape], ROW_STD), lo, hi))
    col = float(np.clip(rng.normal(COLOR_COLUMN[color], COLUMN_STD), lo, hi))
    if style is None:
        strength = 0.0
    elif strength is None:
        strength = float(rng.uniform(*SHADE_RANGE))
    return ShapeSpec(shape, color, size, (row, col), radius, style, float(strength))


def sample_spots(rng: np.random.Generator) -> tuple[tuple[float, float, float], ...]:
    """Spots of a spotted background: (row, column, radius), scattered uniformly."""
    n = int(rng.integers(SPOT_COUNT[0], SPOT_COUNT[1] + 1))
    return tuple((float(rng.uniform(1.5, IMAGE_SIZE - 1.5)), float(rng.uniform(1.5, IMAGE_SIZE - 1.5)),
                  float(rng.uniform(*SPOT_RADIUS))) for _ in range(n))


def sample_scene(rng: np.random.Generator, shape=None, color=None, size=None,
                 background=None, style=None, background_style=None,
                 p_style: float = 0.0, p_background_style: float = 0.0) -> Scene:
    """A one-object scene (the world the shipped model is trained on).

    ``style`` / ``background_style`` fix the appearance words ("plain" for none); left None, an
    object is shaded with probability ``p_style`` and the background spotted with probability
    ``p_background_style`` (both 0: the flat world of the first shipped model)."""
    if background is not None:
        _check_name("background colour", background, COLORS)
    if color is not None and color == background:
        raise ValueError(f"object colour and background are both {color!r}; pick two different colours")
    if style is None and p_style > 0 and rng.random() < p_style:
        style = OBJECT_STYLES[rng.integers(len(OBJECT_STYLES))]
    if background_style is None and p_background_style > 0 and rng.random() < p_background_style:
        background_style = BACKGROUND_STYLES[rng.integers(len(BACKGROUND_STYLES))]
    background_style = None if background_style in (None, "plain") else background_style
    if background_style is not None:
        _check_name("background style", background_style, BACKGROUND_STYLES)
    obj = sample_object(rng, shape, color, size, background, style)
    if background is None:
        bgs = [c for c in COLORS if c != obj.color]
        background = bgs[rng.integers(len(bgs))]
    spots = sample_spots(rng) if background_style else ()
    return Scene((obj,), background, background_style, spots)


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


def mix(rgb, lam):
    """A colour moved along its tint-shade line: toward white by lam > 0, toward black by lam < 0.
    rgb (..., 3) floats in [0, 255]; lam broadcasts against rgb[..., 0]."""
    rgb, lam = np.asarray(rgb, np.float64), np.asarray(lam, np.float64)[..., None]
    return np.where(lam >= 0, rgb + lam * (255.0 - rgb), rgb * (1.0 + lam))


def shading(spec: ShapeSpec, size: int = IMAGE_SIZE) -> np.ndarray:
    """lam per pixel row of a shaded object, (size, 1): strength * (0.5 - h), h = 0 at the top of
    the object and 1 at its bottom (clipped outside); zeros for a flat one."""
    rows = (np.arange(size) + 0.5)[:, None]
    (cy, _), r = spec.center, spec.radius
    h = np.clip((rows - (cy - r)) / (2 * r), 0.0, 1.0)
    return spec.strength * (0.5 - h) if spec.style == "shaded" else np.zeros_like(h)


def spot_mask(spots, size: int = IMAGE_SIZE, supersample: int = 4) -> np.ndarray:
    """Soft coverage in [0, 1] of a spotted background's spots, (size, size)."""
    n = size * supersample
    coords = (np.arange(n) + 0.5) / supersample
    y, x = np.meshgrid(coords, coords, indexing="ij")
    inside = np.zeros((n, n), bool)
    for cy, cx, r in spots:
        inside |= (y - cy) ** 2 + (x - cx) ** 2 <= r ** 2
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def render(scene: Scene, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Image (size, size, 3) uint8 and masks (n_objects, size, size) bool of a scene."""
    img = np.empty((size, size, 3), np.float64)
    img[:] = COLORS[scene.background]
    if scene.spots:
        cover = spot_mask(scene.spots, size)[..., None]
        img = img * (1 - cover) + mix(COLORS[scene.background], SPOT_TINT) * cover
    masks = []
    for obj in scene.objects:
        cover = shape_mask(obj, size)[..., None]  # (H, W, 1)
        color = mix(np.broadcast_to(COLORS[obj.color], (size, 1, 3)), shading(obj, size))  # (H, 1, 3)
        img = img * (1 - cover) + color * cover
        masks.append(cover[..., 0] >= 0.5)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), np.stack(masks)


# ---------------------------------------------------------------- captions

def caption(scene: Scene, with_size: bool = False, with_color: bool = True,
            with_background: bool = True, with_style: bool = True) -> str:
    """'a [size] [style] [colour] shape [and a ...] [on a [style] colour background]'.

    The base form is ``a red circle on a blue background``; the size word, the colour and the
    background clause are optional parts of the grammar (phrase insertion needs them). Appearance
    words ("shaded", "spotted") are written whenever the scene has them (``with_style``), so a
    caption without one asks for a flat object or a plain background.
    """
    parts = []
    for obj in scene.objects:
        words = (["a"] + ([obj.size] if with_size else []) + ([obj.style] if with_style and obj.style else [])
                 + ([obj.color] if with_color else []))
        parts.append(" ".join(words + [obj.shape]))
    text = " and ".join(parts)
    if with_background:
        style = f"{scene.background_style} " if with_style and scene.background_style else ""
        text += f" on a {style}{scene.background} background"
    return text


def random_caption(scene: Scene, rng: np.random.Generator, p_size=0.4, p_color=0.9,
                   p_background=0.85) -> str:
    """A caption with the optional parts drawn at random (how the model is trained). A spotted
    background is always named, so that the background clause is never left out of its caption."""
    return caption(scene, with_size=bool(rng.random() < p_size),
                   with_color=bool(rng.random() < p_color),
                   with_background=bool(scene.background_style) or bool(rng.random() < p_background))


GRAMMAR = ("'a [small|big] [shaded] [colour] shape [on a [spotted] colour background]', shape in "
           f"{SHAPES}, colours {list(COLORS)}")


def parse_caption(text: str) -> dict:
    """Attributes a caption asks for: {'objects': [{'shape', 'color', 'size', 'style'}],
    'background', 'background_style'}.

    Attributes a caption leaves out are ``None`` (for the styles: a flat object, a plain
    background). Raises ValueError for a caption outside the world's grammar, naming the word it
    did not understand and the grammar.
    """
    text = " ".join(text.strip().lower().split())
    background = background_style = None
    m = re.match(r"^(?P<objs>.+) on a (?:(?P<bgstyle>\w+) )?(?P<bg>\w+) background$", text)
    if m:
        text, background, background_style = m.group("objs"), m.group("bg"), m.group("bgstyle")
        _check_name("background colour", background, COLORS)
        if background_style is not None and background_style not in BACKGROUND_STYLES:
            raise ValueError(f"unexpected word {background_style!r} before the background colour: the "
                             f"background styles are {BACKGROUND_STYLES}; the grammar is {GRAMMAR}")
    objects = []
    order = ("size", "style", "color")  # the order adjectives come in
    for part in text.split(" and "):
        words = part.split()
        if not words or words[0] != "a" or words[-1] not in SHAPES or len(words) > 5:
            raise ValueError(f"cannot parse {part!r}: the grammar is {GRAMMAR}")
        obj = {"shape": words[-1], "color": None, "size": None, "style": None}
        last = -1
        for w in words[1:-1]:
            kind = "size" if w in SIZES else "style" if w in OBJECT_STYLES else "color" if w in COLORS else None
            if kind is None or order.index(kind) <= last:
                raise ValueError(f"unexpected word {w!r} in {part!r}: sizes are {SIZES}, styles "
                                 f"{OBJECT_STYLES}, colours {list(COLORS)}, in that order; the grammar is {GRAMMAR}")
            obj[kind], last = w, order.index(kind)
        objects.append(obj)
    return {"objects": objects, "background": background, "background_style": background_style}


# ---------------------------------------------------------------- reading images back

@dataclasses.dataclass
class ObjectReading:
    shape: str
    color: str
    size: str
    mask: np.ndarray  # (H, W) bool
    centroid: tuple[float, float]  # (row, column)
    radius: float
    shading: float = 0.0  # read-back strength of shading: the fitted tint-to-shade span, top to bottom
    style: str | None = None  # "shaded" when shading > SHADE_SPLIT, else None


@dataclasses.dataclass
class Reading:
    background: str
    objects: list[ObjectReading]
    spots: float = 0.0  # share of the background (outside objects) that reads as light spots
    background_style: str | None = None  # "spotted" when spots > SPOT_SPLIT, else None


_PALETTE = np.array(list(COLORS.values()), np.float64)  # (n_colors, 3)
_NAMES = list(COLORS)
_LAMS = np.linspace(-0.6, 0.6, 25)  # tint-shade positions the reader tries (step 0.05)
_LINES = mix(_PALETTE[:, None, :], _LAMS[None, :])  # (n_colors, n_lams, 3)


def read_pixels(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each RGB pixel (..., 3) as (index into COLORS, lam): the nearest point on any named colour's
    tint-shade line (see :func:`mix`), so a shaded pixel still reads as its own colour."""
    d = ((pixels[..., None, None, :].astype(np.float64) - _LINES) ** 2).sum(-1)  # (..., n_colors, n_lams)
    flat = d.reshape(*d.shape[:-2], -1).argmin(-1)
    return flat // len(_LAMS), _LAMS[flat % len(_LAMS)]


def nearest_color(pixels: np.ndarray) -> np.ndarray:
    """Index into COLORS of the named colour whose tint-shade line is nearest each RGB pixel (..., 3)."""
    return read_pixels(pixels)[0]


def shading_strength(lam: np.ndarray, mask: np.ndarray) -> float:
    """The tint-to-shade span of an object: the least-squares slope of lam over its pixel rows,
    times its height (positive when the top is lighter than the bottom)."""
    rows = np.nonzero(mask)[0].astype(np.float64)
    if rows.size < 3 or rows.max() == rows.min():
        return 0.0
    slope = np.polyfit(rows, lam[mask], 1)[0]
    return float(-slope * (rows.max() - rows.min() + 1))


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

    Each pixel is read as a named colour and a tint-shade position lam (:func:`read_pixels`). The
    background is the most common colour on the border; every connected region of another colour
    with at least ``min_pixels`` pixels is an object, read for colour (majority), shape (best IoU
    with an ideal circle, square or triangle inscribed in its box), size, mask, centroid and
    shading (:func:`shading_strength`); the background's spots are its pixels lighter than half
    the spots' tint.
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
    labels, lam = read_pixels(img)  # (H, W), (H, W)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    bg = int(np.bincount(border, minlength=len(_NAMES)).argmax())
    comps, n = ndimage.label(labels != bg)
    objects, covered = [], np.zeros(labels.shape, bool)
    for k in range(1, n + 1):
        mask = comps == k
        if mask.sum() < min_pixels:
            continue
        covered |= mask
        color = int(np.bincount(labels[mask], minlength=len(_NAMES)).argmax())
        shape, radius = _classify_shape(mask)
        rows, cols = np.nonzero(mask)
        shade = shading_strength(lam, mask & (labels == color))
        objects.append(ObjectReading(shape, _NAMES[color], "big" if radius > SIZE_SPLIT else "small",
                                     mask, (float(rows.mean()), float(cols.mean())), radius,
                                     shade, "shaded" if shade > SHADE_SPLIT else None))
    objects.sort(key=lambda o: -o.mask.sum())
    ground = (labels == bg) & ~covered
    spots = float((lam[ground] > SPOT_TINT / 2).mean()) if ground.any() else 0.0
    return Reading(_NAMES[bg], objects, spots, "spotted" if spots > SPOT_SPLIT else None)


def score_caption(image, text: str) -> dict:
    """Does an image show what a one-object caption asks? Returns per-attribute booleans.

    Keys: 'one_object', 'shape', 'color', 'size', 'style', 'background', 'background_style'
    (None where the caption leaves that attribute free), and 'all' (every asked attribute right
    and exactly one object). A caption without an object style asks for a flat object; one with a
    background clause but no background style asks for a plain background.
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
           "style": obj is not None and obj.style == w["style"],
           "background": None if want["background"] is None else got.background == want["background"],
           "background_style": (None if want["background"] is None
                                else got.background_style == want["background_style"])}
    res["all"] = all(v for v in res.values() if v is not None)
    return res
