"""The trainer through Ray and the REAL worker groups (verl.workers.fsdp_workers) on the tiny model:
PPO (GAE) and GRPO learn a rule reward; a resumed run's next step equals an uninterrupted one's."""
from __future__ import annotations

import gc

import numpy as np
import pytest
import ray

from ppo_test_setup import tiny_config
from verl.trainer.main_ppo import build_trainer
from verl.utils.tracking import Tracking

QUIET = Tracking("t", "t", backends=[])


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    # Logical CPUs: each trainer's resource pool reserves one slot per worker until it is collected.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def free_worker_groups():
    yield
    gc.collect()  # drops the test's worker groups, so their pool frees its placement group


def scores(history):
    return [h["critic/score/mean"] for h in history if "critic/score/mean" in h]


@pytest.mark.parametrize("adv_estimator", ["gae", "grpo"])
def test_mean_reward_rises(tmp_path, tiny_model_dir, adv_estimator):
    config = tiny_config(tmp_path, tiny_model_dir, adv_estimator, ["trainer.val_before_train=false"])
    history = build_trainer(config, tracker=QUIET).fit()
    curve = scores(history)
    print(adv_estimator, [round(s, 2) for s in curve])
    assert len(curve) == 8
    assert np.mean(curve[-2:]) > np.mean(curve[:2]) + 0.2
    assert {"actor/pg_clipfrac", "actor/entropy", "response_length/mean", "timing_s/gen", "perf/throughput"} <= set(history[-1])


def comparable(metrics):
    # Time and memory are measurements of the machine, not of the math being compared.
    return {k: v for k, v in metrics.items()
            if not k.startswith(("timing", "perf/time", "perf/throughput")) and not k.endswith("_peak_rss_gb")}


def test_resumed_step_equals_uninterrupted(tmp_path, tiny_model_dir):
    # Sampled rollouts: step k+1 matches only if every worker's sampling RNG resumes as well.
    overrides = ["trainer.total_training_steps=3", "data.train_batch_size=4",
                 "trainer.save_freq=2", "trainer.val_before_train=false"]
    uninterrupted = build_trainer(tiny_config(tmp_path / "a", tiny_model_dir, "gae", overrides), tracker=QUIET)
    full = uninterrupted.fit()
    saved = tmp_path / "a" / "ckpt" / "global_step_2"
    assert (saved / "trainer_state.pt").is_file() and (saved / "actor").is_dir() and (saved / "critic").is_dir()
    assert (saved / "actor" / "huggingface" / "config.json").is_file()
    resumed = build_trainer(tiny_config(tmp_path / "b", tiny_model_dir, "gae", overrides + [f"trainer.resume_mode={saved}"]),
                            tracker=QUIET)
    rest = resumed.fit()
    assert [h["step"] for h in rest] == [3]
    assert comparable(rest[0]) == pytest.approx(comparable(full[2]), rel=1e-5, abs=1e-6)
    assert comparable(full[2]) != pytest.approx(comparable(full[1]))  # steps do differ
