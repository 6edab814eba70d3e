"""benchmarks/edit_kinds.py: its prompts, its success rule on ground-truth renders, and a smoke run."""
import json

import numpy as np
import pytest

from p2p_lab import shapes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reading(bench, shape, color, bg, style=None, strength=0.0, spots=()):
    spec = shapes.ShapeSpec(shape, color, "big", (16.0, 16.0), 7.0, style, strength)
    img = shapes.render(shapes.Scene((spec,), bg, "spotted" if spots else None, spots))[0]
    return bench.reading_of(img)


def test_each_kind_edits_exactly_its_attribute(load_benchmark):
    bench = load_benchmark("edit_kinds")
    rng = np.random.default_rng(0)
    for kind in bench.KINDS:
        for _ in range(20):
            source, target, changed = bench.make_pair(kind, rng)
            a, b = shapes.parse_caption(source), shapes.parse_caption(target)
            oa, ob = a["objects"][0], b["objects"][0]
            differs = {k for k in ("shape", "color", "style") if oa[k] != ob[k]}
            differs |= {"background"} if a["background"] != b["background"] else set()
            assert differs == {changed}, (kind, source, target)
            assert ob["color"] != b["background"]  # never an object on its own colour
    with pytest.raises(ValueError, match="unknown edit kind .swap_size.; the kinds are"):
        bench.make_pair("swap_size", rng)


def test_success_needs_the_target_and_everything_else_kept(load_benchmark):
    bench = load_benchmark("edit_kinds")
    src = _reading(bench, "circle", "red", "blue")
    shaded = _reading(bench, "circle", "red", "blue", "shaded", 0.8)
    target = "a shaded red circle on a blue background"
    assert bench.edit_success(src, shaded, target, "style")
    assert not bench.edit_success(src, src, target, "style")  # nothing inserted
    shaded_green = _reading(bench, "circle", "green", "blue", "shaded", 0.8)
    assert not bench.edit_success(src, shaded_green, target, "style")  # the colour changed too
    spotted = _reading(bench, "square", "red", "blue", spots=((3.0, 3.0, 2.0), (28.0, 28.0, 2.0), (3.0, 28.0, 2.0)))
    assert not bench.edit_success(src, spotted, "a red square on a blue background", "shape")  # spots appeared
    assert bench.edit_success(src, _reading(bench, "square", "red", "blue"), "a red square on a blue background", "shape")
    assert bench.mismatches(src, shaded_green, target, "style") == ["color"]
    assert bench.mismatches(src, spotted, "a red square on a blue background", "shape") == ["background_style"]
    assert bench.mismatches(src, src, target, "style") == ["style"]
    assert bench.mismatches(src, None, target, "style") == ["unreadable"]


class _FakeEdit:
    """An edit that always keeps the source picture (the edit fails); sampled alone (no injection),
    the target prompt is drawn right when ``alone_right``, else it keeps the source too."""

    def __init__(self, alone_right, drawn):
        self.alone_right, self.alone_calls, self.drawn = alone_right, 0, drawn

    def __call__(self, pipe, source, target, *, seed, cross_tau=0.8, self_tau=0.4, cache=None):
        from types import SimpleNamespace

        alone = cross_tau == 0.0 and self_tau == 0.0
        self.alone_calls += alone
        img = self.drawn(target if alone and self.alone_right else source, seed)
        return SimpleNamespace(source_image=self.drawn(source, seed), target_images=[img], cache="cache")


def test_failed_edits_are_split_by_whether_the_model_draws_the_target_alone(load_benchmark, drawn):
    bench = load_benchmark("edit_kinds")
    for alone_right, want_alone_wrong in ((True, 0), (False, 4)):
        fake = _FakeEdit(alone_right, drawn)
        out = bench.run_kind(None, fake, "swap_shape", range(4))
        assert out["n"] == 4 and out["success"] == 0.0 and out["failures"] == {"shape": 4}
        assert out["target_alone_wrong"] == want_alone_wrong and fake.alone_calls == 4
        assert out["shift_px"] == 0.0  # the object never moved


def test_smoke_run_prints_every_figure_as_json(load_benchmark, capsys):
    bench = load_benchmark("edit_kinds")
    out = bench.main(["--seeds", "1", "--threads", "1"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == out
    assert {"swap_colour", "swap_shape", "swap_background", "insert_content", "insert_style", "reweight",
            "local_blend"} <= set(out)
    assert out["reweight"]["scales"] == [-1.0, 0.0, 0.5, 1.0, 2.0, 4.0]
    assert set(out["local_blend"]) >= {"outside_change_ratio", "outside_objects_ratio", "decoder_floor",
                                       "best_possible_ratio"}


def test_the_decoder_floor_pastes_latents_inside_the_mask_only(load_benchmark, shipped_pipe):
    """pasted_inside: an empty mask gives back the source picture; a full one lays on the source the
    difference of the two pictures' decoded encodings, computed here with diffusers' AutoencoderKL."""
    import torch

    bench = load_benchmark("edit_kinds")
    rng = np.random.default_rng(4)
    src, edited = (rng.uniform(0, 1, (32, 32, 3)).astype(np.float32) for _ in range(2))
    np.testing.assert_array_equal(bench.pasted_inside(shipped_pipe, src, edited, np.zeros((8, 8), bool)), src)
    vae = shipped_pipe.vae
    with torch.no_grad():
        x = torch.from_numpy(np.stack([src, edited])).permute(0, 3, 1, 2) * 2 - 1
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1) / 2 + 0.5
    want = src + (y[1] - y[0]).permute(1, 2, 0).numpy()
    got = bench.pasted_inside(shipped_pipe, src, edited, np.ones((8, 8), bool))
    np.testing.assert_allclose(got, want, atol=1e-5)
