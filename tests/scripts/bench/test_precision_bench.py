"""The precision bench's speed-ups: per time, the median of the ratios within adjacent runs."""
from __future__ import annotations

from scripts.bench.precision_bench import pair_ratios


def test_pair_ratios_take_the_median_of_each_pairs_ratio_and_skip_what_is_not_a_time():
    fp32 = [{"timing_s/step": 10.0, "timing_s/adv": 0.001, "rollout/logprob_diff_max": 1e-5},
            {"timing_s/step": 30.0, "timing_s/adv": 0.001, "rollout/logprob_diff_max": 1e-5},
            {"timing_s/step": 8.0, "timing_s/adv": 0.001, "rollout/logprob_diff_max": 1e-5}]
    bf16 = [{"timing_s/step": 5.0, "timing_s/adv": 0.001, "rollout/logprob_diff_max": 0.07},
            {"timing_s/step": 6.0, "timing_s/adv": 0.001, "rollout/logprob_diff_max": 0.07},
            {"timing_s/step": 8.0, "timing_s/adv": 0.001, "rollout/logprob_diff_max": 0.07}]
    # pairs 10/5 = 2, 30/6 = 5, 8/8 = 1: median 2 (the ratio of the medians, 10/6, would compare runs of
    # different moments); the 1 ms phase is too short to compare
    assert pair_ratios(fp32, bf16) == {"timing_s/step": {"median": 2.0, "pairs": [2.0, 5.0, 1.0]}}
    assert pair_ratios([{"seconds": 9.0}], [{"seconds": 4.5}]) == {"seconds": {"median": 2.0, "pairs": [2.0]}}
