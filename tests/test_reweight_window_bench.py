"""benchmarks/reweight_window.py: its prompt pairs, the knobs each arm runs with, and a smoke run."""
import json

import numpy as np
import pytest

from p2p_lab import shapes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_big_prompt_differs_from_the_target_only_where_it_says_shaded(load_benchmark):
    bench = load_benchmark("reweight_window")
    for seed in range(10):
        target, big = bench.prompts(seed)
        t, b = target.split(), big.split()
        assert len(t) == len(b) and [i for i in range(len(t)) if t[i] != b[i]] == [1]
        assert (t[1], b[1]) == ("shaded", "big")
        assert shapes.parse_caption(big)["objects"][0]["style"] is None  # the source's object is flat


def test_each_arm_runs_its_source_and_knobs_and_reads_shading(load_benchmark):
    """A fake edit that draws the object shaded by max(0, c) / 4 * 0.9 under cross_tau = 1 and not at
    all otherwise: only the to-the-end arm responds, across the whole range."""
    from types import SimpleNamespace

    bench = load_benchmark("reweight_window")
    calls = []

    def fake_edit(pipe, source, targets, *, reweight, seed, cache=None, cross_tau=0.8, context_tau=0.0):
        calls.append((source, cross_tau, context_tau, cache))
        want = shapes.parse_caption(targets[0])
        w = want["objects"][0]
        images = []
        for one in reweight:
            strength = 0.9 * max(0.0, one["shaded"]) / 4 if cross_tau == 1.0 else 0.0
            spec = shapes.ShapeSpec(w["shape"], w["color"], "big", (16.0, 16.0), 7.0,
                                    "shaded" if strength else None, strength)
            images.append(shapes.render(shapes.Scene((spec,), want["background"]))[0].astype(np.float32) / 255)
        return SimpleNamespace(target_images=images, cache=f"cache of {source}")

    out = bench.run(None, fake_edit, range(2))
    target, big = bench.prompts(1)
    assert calls[4:] == [(target, 0.8, 0.0, None), (target, 1.0, 0.0, f"cache of {target}"),
                         (big, 0.8, 0.0, None), (big, 0.8, 1.0, f"cache of {big}")]
    assert out["n"] == 2 and out["defaults"]["response_share"] == pytest.approx(0.0, abs=0.02)
    assert out["to_the_end"]["response_share"] == pytest.approx(1.0, abs=0.1)
    assert out["to_the_end"]["spearman"] > 0.9 and out["defaults"]["flat_share"] == [1.0] * 6
    assert out["defaults"]["spearman"] is None  # a flat curve has no rank correlation


def test_smoke_run_prints_every_arm_as_json(load_benchmark, capsys):
    bench = load_benchmark("reweight_window")
    out = bench.main(["--seeds", "1", "--threads", "1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    assert set(bench.ARMS) <= set(out) and out["scales"] == [-1.0, 0.0, 0.5, 1.0, 2.0, 4.0]
