"""The shapes world: generator, captions, and the scorer that reads images back."""
import dataclasses

import numpy as np
import pytest

from p2p_lab import shapes


def test_public_constants():
    assert set(shapes.SHAPES) == {"circle", "square", "triangle"}
    assert len(shapes.COLORS) >= 6
    for rgb in shapes.COLORS.values():
        assert len(rgb) == 3 and all(0 <= c <= 255 for c in rgb)


def test_background_never_equals_object_colour():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = shapes.sample_scene(rng)
        assert scene.background != scene.objects[0].color


@pytest.mark.parametrize("kwargs, word", [({"shape": "hexagon"}, "hexagon"),
                                          ({"color": "mauve"}, "mauve"),
                                          ({"background": "beige"}, "beige"),
                                          ({"size": "huge"}, "huge")])
def test_unknown_names_get_a_clear_error(kwargs, word):
    with pytest.raises(ValueError, match=word):
        shapes.sample_scene(np.random.default_rng(0), **kwargs)


def test_same_colour_for_object_and_background_is_refused():
    with pytest.raises(ValueError, match="different"):
        shapes.sample_scene(np.random.default_rng(0), color="red", background="red")


def test_render_pixels_match_the_ground_truth():
    spec = shapes.ShapeSpec("square", "red", "big", (16.0, 16.0), 6.0)
    img, masks = shapes.render(shapes.Scene((spec,), "blue"))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert tuple(img[16, 16]) == shapes.COLORS["red"]  # centre of the square
    assert tuple(img[0, 0]) == shapes.COLORS["blue"]  # corner
    assert masks[0].sum() == 12 * 12  # a 12 x 12 pixel square, aligned to the grid


def test_circle_area_is_pi_r_squared():
    spec = shapes.ShapeSpec("circle", "red", "big", (16.0, 16.0), 7.0)
    assert shapes.shape_mask(spec, supersample=8).sum() == pytest.approx(np.pi * 49, rel=0.02)


def test_triangle_area_is_half_its_box():
    spec = shapes.ShapeSpec("triangle", "red", "big", (16.0, 16.0), 7.0)
    assert shapes.shape_mask(spec, supersample=8).sum() == pytest.approx(0.5 * 14 * 14, rel=0.03)


def test_layout_priors_shape_sets_row_colour_sets_column():
    rng = np.random.default_rng(1)
    rows = {s: np.mean([shapes.sample_scene(rng, shape=s).objects[0].center[0] for _ in range(200)])
            for s in shapes.SHAPES}
    assert rows["circle"] < rows["triangle"] < rows["square"]
    cols = [np.mean([shapes.sample_scene(rng, color=c).objects[0].center[1] for _ in range(200)])
            for c in shapes.COLORS]
    assert all(a < b for a, b in zip(cols, cols[1:]))


def test_captions_base_form_and_optional_parts():
    scene = shapes.Scene((shapes.ShapeSpec("circle", "red", "big", (9, 9), 7.0),), "blue")
    assert shapes.caption(scene) == "a red circle on a blue background"
    assert shapes.caption(scene, with_size=True) == "a big red circle on a blue background"
    assert shapes.caption(scene, with_color=False, with_background=False) == "a circle"
    two = shapes.Scene(scene.objects + (shapes.ShapeSpec("square", "green", "small", (20, 20), 5.0),), "blue")
    assert shapes.caption(two) == "a red circle and a green square on a blue background"


def test_parse_caption_round_trip_and_errors():
    got = shapes.parse_caption("a big turquoise triangle on a purple background")
    assert got == {"objects": [{"shape": "triangle", "color": "turquoise", "size": "big", "style": None}],
                   "background": "purple", "background_style": None}
    assert shapes.parse_caption("a circle")["objects"][0]["color"] is None
    with pytest.raises(ValueError, match="mauve"):
        shapes.parse_caption("a mauve circle")


def test_scorer_reads_clean_renders_at_least_99_percent():
    rng = np.random.default_rng(123)
    n, right = 500, 0
    for _ in range(n):
        scene = shapes.sample_scene(rng)
        img, masks = shapes.render(scene)
        reading = shapes.read_image(img)
        obj, truth = reading.objects[0], scene.objects[0]
        true_rows, true_cols = np.nonzero(masks[0])  # a triangle's centroid is not its box centre
        right += (len(reading.objects) == 1 and reading.background == scene.background
                  and (obj.shape, obj.color, obj.size) == (truth.shape, truth.color, truth.size)
                  and np.hypot(obj.centroid[0] - true_rows.mean(), obj.centroid[1] - true_cols.mean()) < 1.0
                  and (obj.mask == masks[0]).mean() > 0.97)
    assert right / n >= 0.99


def test_scorer_reads_two_objects_and_float_images():
    a = shapes.ShapeSpec("circle", "red", "small", (8.0, 8.0), 5.0)
    b = shapes.ShapeSpec("square", "yellow", "big", (22.0, 22.0), 7.0)
    img, _ = shapes.render(shapes.Scene((a, b), "blue"))
    reading = shapes.read_image(img.astype(np.float32) / 255.0)
    assert reading.background == "blue"
    assert sorted((o.shape, o.color) for o in reading.objects) == [("circle", "red"), ("square", "yellow")]


def test_score_caption_flags_the_wrong_attribute():
    scene = shapes.sample_scene(np.random.default_rng(5), shape="circle", color="red", background="blue")
    img, _ = shapes.render(scene)
    res = shapes.score_caption(img, "a red square on a blue background")
    assert res["color"] and res["background"] and not res["shape"] and not res["all"]
    assert shapes.score_caption(img, "a circle")["color"] is None


def test_read_image_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="RGB"):
        shapes.read_image(np.zeros((32, 32)))
    with pytest.raises(ValueError, match="shapes-world scorer.*512x512"):
        shapes.read_image(np.zeros((512, 512, 3)))


# ---------------------------------------------------------------- appearance: shaded, spotted

def test_shaded_render_runs_from_tint_to_shade_by_the_formula():
    spec = shapes.ShapeSpec("square", "red", "big", (16.0, 16.0), 7.0, "shaded", 0.8)
    img, _ = shapes.render(shapes.Scene((spec,), "blue"))
    red = np.array(shapes.COLORS["red"], float)
    # hand-worked: row 9 is 0.5 px below the top edge (9.0): h = 0.5 / 14, lam = 0.8 (0.5 - h) > 0
    lam_top = 0.8 * (0.5 - 0.5 / 14)
    assert np.allclose(img[9, 16], np.rint(red + lam_top * (255 - red)), atol=1)
    lam_bottom = 0.8 * (0.5 - 13.5 / 14)  # row 22, the last inside: toward black
    assert np.allclose(img[22, 16], np.rint(red * (1 + lam_bottom)), atol=1)


def test_scorer_reads_styles_and_their_strength_against_the_ground_truth():
    rng = np.random.default_rng(7)
    right, errors, flat = 0, [], []
    for _ in range(300):
        scene = shapes.sample_scene(rng, p_style=0.5, p_background_style=0.5)
        img, _ = shapes.render(scene)
        got, truth = shapes.read_image(img), scene.objects[0]
        obj = got.objects[0]
        right += (len(got.objects) == 1 and (obj.shape, obj.color, obj.style) == (truth.shape, truth.color, truth.style)
                  and got.background == scene.background and got.background_style == scene.background_style)
        (errors if truth.style else flat).append(obj.shading - truth.strength)
    assert right / 300 >= 0.99
    assert abs(np.median(errors)) < 0.08 and np.percentile(np.abs(errors), 90) < 0.15
    assert np.abs(flat).max() < shapes.SHADE_SPLIT  # a flat object never reads as shaded


def test_shading_strength_is_monotone_in_the_drawn_strength():
    reads = []
    for s in (0.0, 0.3, 0.6, 0.9):
        spec = shapes.ShapeSpec("circle", "green", "big", (16.0, 16.0), 7.5, "shaded" if s else None, s)
        reads.append(shapes.read_image(shapes.render(shapes.Scene((spec,), "purple"))[0]).objects[0].shading)
    assert all(a < b for a, b in zip(reads, reads[1:])), reads


def test_grammar_with_styles_and_its_errors():
    got = shapes.parse_caption("a big shaded red circle on a spotted blue background")
    assert got == {"objects": [{"shape": "circle", "color": "red", "size": "big", "style": "shaded"}],
                   "background": "blue", "background_style": "spotted"}
    scene = shapes.Scene((shapes.ShapeSpec("circle", "red", "big", (9, 9), 7.0, "shaded", 0.6),), "blue", "spotted")
    assert shapes.caption(scene, with_size=True) == "a big shaded red circle on a spotted blue background"
    with pytest.raises(ValueError, match="in that order"):
        shapes.parse_caption("a red shaded circle")  # adjectives out of order
    with pytest.raises(ValueError, match="background styles"):
        shapes.parse_caption("a red circle on a striped blue background")
    with pytest.raises(ValueError, match="object style"):
        shapes.sample_scene(np.random.default_rng(0), style="striped")


def test_score_caption_checks_the_styles():
    spec = shapes.ShapeSpec("circle", "red", "big", (16.0, 16.0), 7.0, "shaded", 0.8)
    img, _ = shapes.render(shapes.Scene((spec,), "blue", "spotted", ((3.0, 3.0, 2.0), (28.0, 4.0, 2.0), (4.0, 27.0, 2.0))))
    assert shapes.score_caption(img, "a shaded red circle on a spotted blue background")["all"]
    res = shapes.score_caption(img, "a red circle on a blue background")  # asks for flat and plain
    assert not res["style"] and not res["background_style"] and res["color"] and not res["all"]
    assert shapes.score_caption(img, "a shaded red circle")["background_style"] is None


def test_object_measures_and_describe_read_the_appearance_words_against_the_ground_truth():
    """metrics.object_measures reads shading and spots as the generator drew them (a hand-made scene:
    a drawn strength of 0.7 and four spots of known coverage), and describe names them; a flat scene
    reads 0 and keeps its two plain lines."""
    from p2p_lab.metrics import describe, object_measures

    spots = ((4.0, 4.0, 2.0), (4.0, 27.0, 2.0), (27.0, 4.0, 2.0), (27.0, 27.0, 2.0))
    spec = shapes.ShapeSpec("circle", "red", "big", (16.0, 16.0), 7.0, "shaded", 0.7)
    scene = shapes.Scene((spec,), "blue", "spotted", spots)
    img, masks = shapes.render(scene)
    img = img / 255.0  # the pipeline's pictures: floats in [0, 1]
    m = object_measures(img)
    assert abs(m["shading"] - 0.7) < 0.08
    covered = shapes.spot_mask(spots) > 0.5  # the spots' pixels, all clear of the object
    assert abs(m["spots"] - covered.sum() / (~masks[0]).sum()) < 0.01
    assert describe(img) == "shaded red circle\non spotted blue"
    flat = shapes.render(shapes.Scene((dataclasses.replace(spec, style=None, strength=0.0),), "blue"))[0] / 255.0
    assert object_measures(flat)["shading"] < shapes.SHADE_SPLIT and object_measures(flat)["spots"] == 0
    assert describe(flat) == "red circle\non blue"
