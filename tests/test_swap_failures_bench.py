"""benchmarks/swap_failures.py: each failed swap classed by which single change fixes it."""
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_failure_is_the_models_miss_first_then_the_cross_window_then_the_self_window(load_benchmark):
    bench = load_benchmark("swap_failures")
    assert bench.classify(False, ["cross 0.4", "self 0"]) == "model_miss"  # the target alone is wrong
    assert bench.classify(True, ["cross 0.2", "self 0"]) == "cross_window"
    assert bench.classify(True, ["self 0", "cross 0.4, self 0"]) == "self_window"
    assert bench.classify(True, ["cross 0.4, self 0"]) == "other"  # only both together
    assert bench.classify(True, []) == "other"


def test_each_failed_swap_is_rerun_with_every_setting(load_benchmark, drawn):
    """A fake edit that keeps the source picture unless cross_tau <= 0.4 (or nothing is injected):
    every shape swap fails at the defaults and is fixed by cross 0.4 and 0.2 only, a 'cross_window' failure."""
    bench = load_benchmark("swap_failures")

    def fake_edit(pipe, source, target, *, seed, cross_tau=0.8, self_tau=0.4, cache=None):
        img = drawn(target if cross_tau <= 0.4 else source, seed)
        return SimpleNamespace(source_image=drawn(source, seed), target_images=[img], cache="c")

    out = bench.diagnose(None, fake_edit, "swap_shape", range(3))
    assert out["n"] == 3 and out["failed"] == 3 and out["classes"] == {"cross_window": 3}
    for row in out["rows"]:
        assert row["wrong"] == ["shape"] and row["target_alone_right"]
        assert row["fixed_by"] == ["cross 0.4", "cross 0.2", "cross 0.4, self 0"]
