"""The learning benchmark's arithmetic: quarters, their standard error, the verdict, the overrides."""
from __future__ import annotations

import json
import math

import pytest

from scripts.bench.learning_bench import frontier_first, quarter_means, summarize, summary_line, with_overrides


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


def _questions(path, ids_types):
    path.write_text("".join(json.dumps({"id": i, "type": t, "question": f"q{i}"}) + "\n" for i, t in ids_types))
    return path


def _ids(path):
    return [json.loads(row)["id"] for row in path.read_text().splitlines()]


def test_the_frontier_questions_come_first_as_many_of_each_type(tmp_path):
    kinds = ["bridge"] * 6 + ["comparison"] * 6
    candidates = _questions(tmp_path / "candidates.jsonl", [(f"c{i}", t) for i, t in enumerate(kinds)])
    # at the frontier: 4 bridge, 3 comparison questions
    frontier = _questions(tmp_path / "frontier.jsonl", [(f"c{i}", kinds[i]) for i in (0, 1, 2, 3, 6, 7, 8)])
    picked, at_frontier = frontier_first(candidates, frontier, 4, seed=0, out=tmp_path / "q")
    ids = _ids(picked)
    assert at_frontier == 4 and len(ids) == 4 and set(ids) <= {"c0", "c1", "c2", "c3", "c6", "c7", "c8"}
    assert sum(i in {"c0", "c1", "c2", "c3"} for i in ids) == 2  # two of each type
    assert ids == sorted(ids, key=lambda i: int(i[1:]))  # in the candidates' order


def test_too_few_at_the_frontier_are_all_kept_and_the_others_fill_the_set(tmp_path):
    kinds = ["bridge"] * 6 + ["comparison"] * 6
    candidates = _questions(tmp_path / "candidates.jsonl", [(f"c{i}", t) for i, t in enumerate(kinds)])
    frontier = _questions(tmp_path / "frontier.jsonl", [("c1", "bridge"), ("c9", "comparison")])
    picked, at_frontier = frontier_first(candidates, frontier, 6, seed=0, out=tmp_path / "q")
    ids = _ids(picked)
    assert at_frontier == 2 and len(ids) == 6 and {"c1", "c9"} <= set(ids)
    others = [i for i in ids if i not in {"c1", "c9"}]
    assert sum(int(i[1:]) < 6 for i in others) == 2  # the four others: two of each type
    empty = _questions(tmp_path / "none.jsonl", [])
    assert frontier_first(candidates, empty, 3, seed=0, out=tmp_path / "q0")[1] == 0
