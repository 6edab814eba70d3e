"""benchmarks/inversion_eval.py: its scenes, targets and scoring on hand-made cases, and a smoke run."""
import json

import numpy as np
import pytest

from p2p_lab import shapes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ev(load_benchmark):
    return load_benchmark("inversion_eval")


def test_scenes_cover_the_world_and_targets_swap_one_word(ev):
    drawn = [ev.make_scene(k) for k in range(21)]
    scenes = [scene for scene, _ in drawn]
    pairs = {(s.objects[0].shape, s.objects[0].color) for s in scenes}
    assert len(pairs) == 21  # every shape with every colour
    assert all(s.background != s.objects[0].color for s in scenes)
    cov = ev.coverage(105, 0)
    assert set(cov["shapes"]) == set(shapes.SHAPES) and set(cov["colors"]) == set(shapes.COLORS)
    assert len(cov["backgrounds"]) >= 5 and set(cov["colors"].values()) == {15}
    for scene, targets in drawn:
        src = shapes.parse_caption(shapes.caption(scene))
        for kind, target in targets.items():
            t = shapes.parse_caption(target)
            changed = {"color": t["objects"][0]["color"] != src["objects"][0]["color"],
                       "shape": t["objects"][0]["shape"] != src["objects"][0]["shape"],
                       "background": t["background"] != src["background"]}
            assert [key for key, c in changed.items() if c] == [kind], (kind, target)
            assert t["background"] != t["objects"][0]["color"]
    # scenes and targets from one stream per scene: the new colour is uniform over the allowed
    # ones (a second stream seeded alike correlated them with the scene's own draws)
    swaps = [shapes.parse_caption(targets["color"]) for _, targets in map(ev.make_scene, range(700))]
    new = [(t["objects"][0]["color"], t["background"]) for t in swaps]
    counts = np.unique([c for c, _ in new], return_counts=True)[1]
    assert len(counts) == 7 and counts.min() > 70 and counts.max() < 130
    assert len(set(new)) == 7 * 6  # every new colour on every other background


def test_scoring_against_the_input(ev):
    """A perfect edit scores success 1, no shift and the PSNR cap; the source row's PSNR is separate."""
    scene = shapes.Scene((shapes.ShapeSpec("square", "red", "big", (16.0, 16.0), 7.0),), "blue")
    x = shapes.render(scene)[0].astype(np.float32) / 255
    obj = shapes.read_image(x).objects[0]
    targets = {"color": "a green square on a blue background", "shape": "a red circle on a blue background",
               "background": "a red square on a yellow background"}
    perfect = [shapes.render(shapes.Scene((shapes.ShapeSpec(sh, c, "big", (16.0, 16.0), 7.0),), bg))[0]
               .astype(np.float32) / 255 for sh, c, bg in [("square", "green", "blue"), ("circle", "red", "blue"),
                                                            ("square", "red", "yellow")]]
    noisy_source = np.clip(x + 0.01, 0, 1)  # a reconstruction 40 dB from the input
    s = ev.score_edits(x, obj, noisy_source, perfect, targets)
    for kind in ("color", "shape", "background"):
        assert s[kind]["edit_success"] == 1.0 and s[kind]["centroid_shift_px"] < 0.5, kind
        assert s[kind]["bg_psnr_db"] == 60.0 and abs(s[kind]["bg_psnr_vs_source_db"] - 40.0) < 0.1
    wrong = ev.score_edits(x, obj, x, [x, x, x], targets)  # nothing edited
    assert all(v["edit_success"] == 0.0 for v in wrong.values())


def test_quick_run(ev, shipped_pipe, capsys):
    out = ev.main(["--quick", "--scenes", "2"], pipe=shipped_pipe)
    assert set(out["methods"]) == set(ev.METHODS)
    for m, s in out["methods"].items():
        assert s["n"] == 6 and set(s["by_edit"]) == {"color", "shape", "background"}
        assert s["seconds_inversion"] > 0 and s["seconds_inversion_edit"] > s["seconds_inversion"]
    assert out["methods"]["direct"]["recon_below_ceiling_db"] == 0.0  # its source row is D(z*_0)
    assert out["fixed_seed"]["sources"] == 2 and out["settings"]["steps"] == 3
    assert [(d["guidance"], d["inverted_at"]) for d in out["drift"]] == [(1.0, 1.0), (4.0, 1.0), (4.0, 4.0)]
    assert out["goals"]["pie_bench_order"] == ["direct", "null-text", "negative-prompt", "ddim"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out


def test_variants_defaults_agree_with_inversion_eval(ev, load_benchmark, shipped_pipe, capsys):
    """benchmarks/inversion_variants.py edits each target on its own; at the defaults its scores are
    inversion_eval's DirectInversion scores (three targets in one edit) on the same scenes."""
    var = load_benchmark("inversion_variants")
    got = var.main(["--scenes", "2", "--steps", "3"], pipe=shipped_pipe)
    ref = ev.main(["--scenes", "2", "--steps", "3", "--methods", "direct", "--drift-scenes", "0"], pipe=shipped_pipe)
    defaults = got["variants"]["defaults (cross tau 0.8, self tau 0.4)"]
    for kind in ("color", "shape", "background"):
        assert defaults["by_edit"][kind] == ref["methods"]["direct"]["by_edit"][kind]["edit_success"]
    assert set(got["variants"]) == set(var.VARIANTS)
