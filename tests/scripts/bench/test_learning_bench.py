"""The learning benchmark's arithmetic: quarters, their standard error, the verdict, the overrides."""
from __future__ import annotations

import math

import pytest

from scripts.bench.learning_bench import quarter_means, summarize, summary_line, with_overrides


def test_quarter_means_and_the_standard_error_of_their_difference():
    # 8 steps: quarters of 2. first (0.1, 0.3): mean 0.2, variance 0.02; last (0.5, 0.9): mean 0.7, variance 0.08
    first, last, se = quarter_means([0.1, 0.3, 0.2, 0.2, 0.4, 0.4, 0.5, 0.9])
    assert (first, last) == (pytest.approx(0.2), pytest.approx(0.7))
    assert se == pytest.approx(math.sqrt(0.02 / 2 + 0.08 / 2))


def test_a_short_run_has_quarters_of_one_step():
    assert quarter_means([0.25, 0.5, 1.0]) == (0.25, 1.0, 0.0)


def _rows(rewards, em_before, em_after):
    steps = [{"step": i + 1, "sampling/score_mean": r, "actor/entropy": 0.5 - 0.01 * i} for i, r in enumerate(rewards)]
    return [{"step": 0, "val/reward/em": em_before}, *steps[:-1], {**steps[-1], "val/reward/em": em_after}]


def test_the_run_learns_when_the_reward_rises_beyond_two_standard_errors_and_greedy_em_rises():
    rewards = [0.1, 0.12, 0.1, 0.12, 0.2, 0.25, 0.3, 0.32]  # quarters .11 and .31, each of variance .0002
    s = summarize(_rows(rewards, 0.25, 0.5), seconds=600)
    assert s["learns"] and s["steps"] == 8 and s["minutes"] == 10
    assert (s["entropy_first"], s["entropy_last"]) == (0.5, pytest.approx(0.43))
    line = summary_line(s)
    assert line.startswith("learning: reward first-quarter 0.110 last-quarter 0.310 (s.e. 0.014) | "
                           "greedy EM on the set before 0.250 after 0.500 | entropy 0.500 -> 0.430 | steps 8 in 10.0 min")
    assert not summarize(_rows(rewards, 0.5, 0.5), seconds=600)["learns"]  # greedy EM did not rise
    noisy = [0.0, 0.4, 0.1, 0.1, 0.1, 0.1, 0.0, 0.6]  # +0.1 with a standard error of 0.3
    assert not summarize(_rows(noisy, 0.25, 0.5), seconds=600)["learns"]


def test_a_run_without_its_validations_is_refused():
    rows = [{"step": 1, "sampling/score_mean": 0.1, "actor/entropy": 0.3}]
    with pytest.raises(SystemExit, match="validation before and after"):
        summarize(rows, seconds=1)


def test_overrides_replace_the_recipes_keys_and_keep_the_rest():
    base = ["data.train_batch_size=4", "+custom_reward_function.reward_kwargs.round_cost=0.1", "trainer.save_freq=1"]
    changed = with_overrides(base, ["data.train_batch_size=8", "custom_reward_function.reward_kwargs.round_cost=0"])
    assert changed == ["trainer.save_freq=1", "data.train_batch_size=8", "custom_reward_function.reward_kwargs.round_cost=0"]
