"""Shared set-up of the trainer tests: a prompt set, a learnable rule reward, a small config."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from verl.trainer.config import compose_config

TARGET = "e"
# Every model computes in fp32, so runs compare to tight tolerances on any CPU.
FP32 = ["actor_rollout_ref.actor.fsdp_config.dtype=float32", "actor_rollout_ref.ref.fsdp_config.dtype=float32",
        "critic.model.fsdp_config.dtype=float32"]


def contains_target(data_source, solution_str, ground_truth, extra_info=None):
    """1 when the response contains the letter "e" (about half of the tiny model's random
    8-token responses do), plus the response's character count as an extra metric."""
    return {"score": float(TARGET in solution_str), "chars": float(len(solution_str))}


def odd_prompts_vary(data_source, solution_str, ground_truth, extra_info=None):
    """Even prompts score 0 on every sample (a group with nothing to compare); odd prompts score the
    response length's parity, which differs between samples of a random model."""
    if extra_info["index"] % 2 == 0:
        return {"score": 0.0, "index": float(extra_info["index"])}
    return {"score": float(len(solution_str) % 2), "index": float(extra_info["index"])}


def write_prompts(path: Path, n: int, source: str = "toy") -> str:
    rows = [{"data_source": source, "prompt": [{"role": "user", "content": f"Say something {i}."}],
             "ability": "toy", "reward_model": {"style": "rule", "ground_truth": TARGET},
             "extra_info": {"index": i}} for i in range(n)]
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def tiny_config(tmp_path: Path, model_dir, adv_estimator: str = "gae", overrides=()):
    tmp_path.mkdir(parents=True, exist_ok=True)
    train = write_prompts(tmp_path / "train.parquet", 32)
    val = write_prompts(tmp_path / "val.parquet", 5, source="toy_val")
    grpo = adv_estimator == "grpo"
    return compose_config([
        f"data.train_files={train}", f"data.val_files={val}", "data.train_batch_size=8", "data.val_batch_size=2",
        "data.max_prompt_length=32", "data.max_response_length=8",
        f"actor_rollout_ref.model.path={model_dir}", "actor_rollout_ref.actor.optim.lr=3e-2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        f"actor_rollout_ref.rollout.n={4 if grpo else 2}", "critic.optim.lr=3e-3", "critic.ppo_mini_batch_size=4",
        "critic.ppo_micro_batch_size_per_gpu=8", f"algorithm.adv_estimator={adv_estimator}",
        "trainer.total_training_steps=8", "trainer.logger=[console]", "trainer.val_before_train=true",
        "trainer.test_freq=-1", f"trainer.default_local_dir={tmp_path / 'ckpt'}",
        f"custom_reward_function.path={Path(__file__).resolve()}", "custom_reward_function.name=contains_target",
        *FP32, *overrides,
    ])
