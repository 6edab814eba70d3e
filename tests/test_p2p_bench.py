"""The P2P benchmarks: their scoring on ground-truth renders, and a smoke run of each (issue 6)."""
import numpy as np
import pytest

from p2p_lab import shapes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _render(shape, color, bg, center=(16.0, 16.0)):
    scene = shapes.Scene((shapes.ShapeSpec(shape, color, "big", center, 7.0),), bg)
    return shapes.render(scene)[0].astype(np.float32) / 255, shapes.caption(scene)


def test_eval_scores_ground_truth_edits(load_benchmark):
    ev = load_benchmark("p2p_eval")
    src, _ = _render("circle", "red", "blue")
    src_obj = shapes.read_image(src).objects[0]
    tgt, cap = _render("circle", "green", "blue")  # a perfect colour swap
    s = ev.score("color", src, src_obj, tgt, cap)
    assert s["edit_success"] == 1.0 and s["centroid_shift_px"] < 0.5 and s["bg_psnr_db"] == 60.0  # identical: the cap
    moved, cap = _render("circle", "green", "blue", center=(16.0, 22.0))  # right colour, moved 6 px
    s = ev.score("color", src, src_obj, moved, cap)
    assert s["edit_success"] == 1.0 and 5.0 < s["centroid_shift_px"] < 7.0
    bg, cap = _render("circle", "red", "yellow")  # a background swap keeps the object
    s = ev.score("background", src, src_obj, bg, cap)
    assert s["edit_success"] == 1.0 and s["bg_psnr_db"] > 30
    assert ev.true_mask("background", src_obj, 2).sum() == (~src_obj.mask).sum()
    assert ev.true_mask("shape", src_obj, 2).sum() > src_obj.mask.sum()
    source, target = ev.make_pair("shape", np.random.default_rng(0))
    a, b = shapes.parse_caption(source), shapes.parse_caption(target)
    assert a["background"] == b["background"] and a["objects"][0]["shape"] != b["objects"][0]["shape"]
    assert ev.swapped_word(source, target) == b["objects"][0]["shape"]
    assert ev.swapped_word("a red circle on a blue background", "a red circle on a green background") == "green"
    with pytest.raises(ValueError, match="one-word swap"):
        ev.swapped_word("a red circle", "a big red circle")


def test_benchmarks_quick(load_benchmark, shipped_pipe, capsys):
    import json

    ev = load_benchmark("p2p_eval").main(["--quick", "--seeds", "1", "--steps", "3", "--all-sources"],
                                         pipe=shipped_pipe)  # at 2 steps the one source is not one readable object
    assert set(ev) >= {"fixed_seed", "mask_blend", "p2p", "p2p_paper", "by_edit", "tau_sweep", "context_sweep",
                       "word_tau_sweep", "note"}
    assert [r["word_tau"] for r in ev["word_tau_sweep"]] == [0.4] and ev["word_tau_sweep"][0]["n"] == ev["p2p"]["n"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == ev
    sp = load_benchmark("p2p_speed").main(["--quick", "--steps", "2", "--no-sd"], pipe=shipped_pipe)
    assert sp["overhead_ratio"] > 0 and sp["cached_rerun_ratio"] > 0
    assert sp["meets_targets"] == (sp["overhead_ratio"] <= 1.10 and sp["cached_rerun_ratio"] <= 0.6)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == sp


def test_sd_v1_store_bytes_by_hand(load_benchmark, sd_like_pipe):
    """SD v1 at 256 px (the benchmark uses 64x64 latents, 512 px): cross maps at 32^2 (5 layers),
    16^2 (5), 8^2 (5), 4^2 (1), 77 tokens, float32, one prompt."""
    from p2p_lab.p2p import attention_layers

    sp = load_benchmark("p2p_speed")
    b = sp.store_bytes(attention_layers(sd_like_pipe, (32, 32)), 77, 50, 8)
    queries = 5 * 32 ** 2 + 5 * 16 ** 2 + 5 * 8 ** 2 + 4 ** 2
    assert b["all_cross_per_step"] == queries * 77 * 4 * 50
    assert b["cross_res8_per_step"] == 5 * 8 ** 2 * 77 * 4 * 50
