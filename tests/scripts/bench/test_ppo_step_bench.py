"""The step bench's one-step-off comparison, from per-step metrics worked out by hand."""
from __future__ import annotations

import pytest

from scripts.bench.ppo_step_bench import one_step_off_report


def step(seconds: float, gen: float, update: float, ahead: float | None = None, wait: float | None = None) -> dict:
    metrics = {"timing_s/step": seconds, "timing_s/gen": gen, "timing_s/update_actor": update}
    if ahead is not None:
        metrics.update({"timing_s/gen_ahead": ahead, "timing_s/gen_ahead_wait": wait})
    return metrics


def test_one_step_off_report_compares_the_steady_steps_and_the_whole_runs():
    sync = [step(20, 12, 6), step(16, 10, 5), step(14, 8, 5), step(15, 9, 5)]
    # lag 1: steps 1-3 sample the next batch ahead (10, 8, 6 s) and then wait 4, 2, 0 s for it
    off = [step(22, 12, 6, 10, 4), step(9, 0, 7, 8, 2), step(7, 0, 6, 6, 0), step(5, 0, 5)]
    report = one_step_off_report(sync, off)
    assert report["sync_step_s"] == [20, 16, 14, 15] and report["one_step_off_step_s"] == [22, 9, 7, 5]
    # steps 2 and 3: sync (16 + 14) / 2 = 15, one step off (9 + 7) / 2 = 8
    assert (report["sync_step_s_mean"], report["one_step_off_step_s_mean"]) == (15.0, 8.0)
    assert report["step_time_ratio"] == pytest.approx(0.533)
    # whole runs: 65 s and 43 s
    assert (report["sync_run_s"], report["one_step_off_run_s"], report["run_time_ratio"]) == (65, 43, 0.662)
    assert (report["sync_gen_s_mean"], report["sync_update_actor_s_mean"]) == (9.0, 5.0)
    assert report["one_step_off_update_actor_s_mean"] == 6.5
    # 24 s of rollouts ahead, 6 s of them waited for: 1 - 6 / 24 overlapped training
    assert (report["rollout_ahead_s"], report["rollout_ahead_wait_s"]) == (24, 6)
    assert report["rollout_overlapped_share"] == 0.75
