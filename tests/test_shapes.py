"""The shapes world: generator, captions, and the scorer that reads images back."""
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
    assert got == {"objects": [{"shape": "triangle", "color": "turquoise", "size": "big"}],
                   "background": "purple"}
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
