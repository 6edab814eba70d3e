"""benchmarks/sd_fullsize.py's fp16 estimate from a float32 run at few steps, on hand-worked cells."""
import pytest

from p2p_lab.p2p import cache as cache_module

GB = 2 ** 30


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("sd_fullsize")


def test_fp16_peak_halves_the_rest_scales_stores_and_caps_caches(bench):
    # 10 GB peak above a 1 GB base, 0.5 GB of stores and 1 GB of caches after the cell, measured in
    # float32 at 2 steps for a 50-step notebook: the other 8.5 GB halve to 4.25; the stores keep
    # float32 maps, 0.5 x 25 = 12.5; the caches would be 1 x 25 / 2 = 12.5 but the pool holds 2 GiB.
    cell = {"peak": 11 * GB, "stores": GB // 2, "caches": GB}
    cap = cache_module.CACHE_TOTAL_BYTES / GB
    assert bench._fp16_peak(cell, GB, 0.5, 25.0) / GB == pytest.approx(4.25 + 12.5 + cap)
    # few caches: scaled, under the cap (0.01 GB x 25 / 2 = 0.125 GB); a bfloat16 run is not halved
    small = {"peak": 3 * GB, "stores": 0, "caches": GB // 100}
    assert bench._fp16_peak(small, GB, 1.0, 25.0) / GB == pytest.approx(2 - 0.01 + 0.01 * 25, abs=1e-3)
    assert bench._fp16_peak(small, GB, 0.5, 25.0) / GB == pytest.approx((2 - 0.01) / 2 + 0.01 * 25 / 2, abs=1e-3)
