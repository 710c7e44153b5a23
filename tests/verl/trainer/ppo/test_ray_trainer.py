"""The trainer's loop on IN-PROCESS FAKE worker groups (inprocess_fake_workers.py): fast, no Ray.
Learning and resuming through Ray and the real worker groups: test_ray_trainer_workers.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from inprocess_fake_workers import InProcessFakeActorRolloutRefWG, InProcessFakeCriticWG
from ppo_test_setup import tiny_config
from verl.protocol import DataProto
from verl.trainer.config import need_critic
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.trainer.ppo.reward import RewardManager, load_reward_function
from verl.utils.dataset import RLHFDataset
from verl.utils.tracking import Tracking


def build(config, model_dir, tracker=None):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    score = load_reward_function(config.custom_reward_function.path, config.custom_reward_function.name)
    actor = InProcessFakeActorRolloutRefWG(model_dir, tokenizer, config.actor_rollout_ref)
    critic = None
    if need_critic(config):
        critic = InProcessFakeCriticWG(model_dir, config.critic, config.actor_rollout_ref.rollout.n)
    reward = RewardManager(tokenizer, score)
    return RayPPOTrainer(config, tokenizer, actor, critic, reward, reward,
                         RLHFDataset(config.data.train_files, tokenizer, config.data),
                         RLHFDataset(config.data.val_files, tokenizer, config.data),
                         tracker=tracker or Tracking("t", "t", backends=[]))


def test_validation_covers_every_row(tmp_path, tiny_model_dir):
    # 5 validation rows in batches of 2: the last batch has one row and must not be dropped.
    trainer = build(tiny_config(tmp_path, tiny_model_dir, "grpo"), tiny_model_dir)
    metrics = trainer.validate()
    assert metrics["val/num_rows"] == 5.0
    assert 0.0 <= metrics["val/test_score/toy_val"] <= 1.0 and "val/reward/chars" in metrics


def test_critic_warmup_and_kl_in_reward(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, "gae", [
        "trainer.total_training_steps=2", "trainer.critic_warmup=1", "trainer.val_before_train=false",
        "algorithm.use_kl_in_reward=true", "algorithm.kl_ctrl.kl_coef=0.5"])
    first, second = build(config, tiny_model_dir).fit()
    assert "critic/vf_loss" in first and "actor/pg_loss" not in first  # step 1 only trains the critic
    assert "actor/pg_loss" in second and "timing_s/update_actor" in second
    # the critic-only step 1 left the policy equal to the reference: no KL in step 2's rollout either
    assert first["actor/reward_kl_penalty"] == second["actor/reward_kl_penalty"] == pytest.approx(0.0, abs=1e-6)
    assert second["critic/rewards/mean"] == pytest.approx(second["critic/score/mean"], abs=1e-6)


def test_kl_penalty_enters_the_reward(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, "gae", ["algorithm.use_kl_in_reward=true",
                                                           "algorithm.kl_ctrl.kl_coef=0.5", "algorithm.kl_penalty=kl"])
    trainer = build(config, tiny_model_dir)
    scores = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    batch = DataProto.from_dict({
        "token_level_scores": scores, "response_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        "old_log_probs": torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]]),
        "ref_log_prob": torch.tensor([[-1.5, -1.0, -0.5], [-1.0, -1.0, -9.0]])})
    metrics = trainer.apply_kl_in_reward(batch)
    # k1 = old - ref per token: row 0 (0.5, 0, -0.5), row 1 (-1, -1, masked); rewards = scores - 0.5 * k1
    expected = torch.tensor([[-0.25, 0.0, 1.25], [0.5, 1.5, 0.0]])
    assert torch.allclose(batch.batch["token_level_rewards"], expected)
    assert metrics["actor/reward_kl_penalty"] == pytest.approx((0.0 + -1.0) / 2)  # mean of per-row means


def comparable(metrics):
    return {k: v for k, v in metrics.items() if not k.startswith(("timing", "perf/time", "perf/throughput"))}


def test_sampled_resume_equals_uninterrupted(tmp_path, tiny_model_dir):
    # Sampled rollouts: the fake generates with the driver's torch RNG, which the trainer state restores.
    overrides = ["trainer.total_training_steps=3", "trainer.save_freq=2", "trainer.val_before_train=false",
                 "data.train_batch_size=4"]
    full = build(tiny_config(tmp_path / "a", tiny_model_dir, "gae", overrides), tiny_model_dir).fit()
    saved = tmp_path / "a" / "ckpt" / "global_step_2"
    # the resumed run's log is a killed run's: steps 1-3 written, then killed before step 3's checkpoint
    log = tmp_path / "b" / "metrics.jsonl"
    log.parent.mkdir()
    log.write_text("".join(json.dumps({"step": h["step"], "x": 1.0}) + "\n" for h in full))
    rest = build(tiny_config(tmp_path / "b", tiny_model_dir, "gae", overrides + [f"trainer.resume_mode={saved}"]),
                 tiny_model_dir, Tracking("t", "t", backends=["jsonl"], jsonl_path=str(log))).fit()
    assert [h["step"] for h in rest] == [3]
    assert comparable(rest[0]) == pytest.approx(comparable(full[2]), rel=1e-5, abs=1e-6)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3] and "x" not in rows[2]  # step 3 once: the resumed run's


def test_dynamic_sampling_keeps_varied_groups_and_refills_the_batch(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, "grpo", [
        "algorithm.filter_groups.enable=true", "algorithm.filter_groups.max_num_gen_batches=3",
        "custom_reward_function.name=odd_prompts_vary", "data.shuffle=false", "actor_rollout_ref.rollout.temperature=2.0"])
    trainer = build(config, tiny_model_dir)
    batch, metrics = trainer.sample_scored_batch(trainer.prompt_batches())
    scores = batch.batch["token_level_scores"].sum(-1)
    uids = batch.non_tensor_batch["uid"]
    groups = {u: scores[uids == u] for u in set(uids)}
    assert all(g.max() > g.min() for g in groups.values())  # every kept group has something to compare
    indices = {int(info["index"]) for info in batch.non_tensor_batch["extra_info"]}
    assert indices and all(i % 2 == 1 for i in indices)  # only odd prompts survive
    # 8 prompts per generation batch hold at most 4 varied groups: a second batch was generated
    assert metrics["sampling/num_gen_batches"] >= 2
    assert metrics["sampling/kept_groups"] == len(groups) <= 8 and len(batch) == 4 * len(groups)
    # the reward curve describes every sampled row, the dropped groups' zeros included
    assert metrics["sampling/score_mean"] < float(scores.mean())


def test_a_missing_refill_rolls_out_only_the_groups_still_missing(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, "grpo", [
        "algorithm.filter_groups.enable=true", "algorithm.filter_groups.max_num_gen_batches=4",
        "algorithm.filter_groups.refill=missing", "custom_reward_function.name=odd_prompts_vary",
        "actor_rollout_ref.rollout.temperature=2.0"])
    trainer = build(config, tiny_model_dir)
    rollout, score = trainer.rollout, trainer.compute_scores
    prompts, varied = [], []  # per generation batch: prompts rolled out, groups whose samples differ
    indices = []  # every rolled-out row's prompt index

    def counting_rollout(batch):
        prompts.append(len(set(batch.non_tensor_batch["uid"])))
        return rollout(batch)

    def counting_scores(batch):
        extras = score(batch)
        values = batch.batch["token_level_scores"].sum(-1).numpy()
        varied.append(len(set(batch.non_tensor_batch["uid"][core_algos.varied_groups(batch.non_tensor_batch["uid"], values)])))
        indices.extend(info["index"] for info in batch.non_tensor_batch["extra_info"])
        return extras

    trainer.rollout, trainer.compute_scores = counting_rollout, counting_scores
    batch, metrics = trainer.sample_scored_batch(trainer.prompt_batches())
    # even prompts never vary, so the first batch of 8 keeps at most 4 groups and a refill follows
    assert prompts[0] == 8 and len(prompts) >= 2
    for k in range(1, len(prompts)):
        assert prompts[k] == 8 - sum(varied[:k])  # only the groups still missing
    assert metrics["sampling/kept_groups"] == min(8, sum(varied)) == len(set(batch.non_tensor_batch["uid"]))
    # a reward number's mean counts every rolled-out row once, whatever the size of its batch
    assert metrics["reward/index"] == pytest.approx(float(np.mean(indices)))


def test_a_refill_mode_is_checked_by_name(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="algorithm.filter_groups.refill='half': expected batch | missing"):
        tiny_config(tmp_path, tiny_model_dir, "grpo", ["algorithm.filter_groups.refill=half"])


def test_reward_curve_leaves_out_guided_rows(tmp_path, tiny_model_dir):
    trainer = build(tiny_config(tmp_path, tiny_model_dir, "grpo", ["custom_reward_function.name=odd_prompts_vary"]),
                    tiny_model_dir)
    rollout = trainer.rollout

    def rollout_with_a_guide_per_group(prompts):
        batch, metrics = rollout(prompts)
        n = trainer.config.actor_rollout_ref.rollout.n
        batch.non_tensor_batch["guided"] = np.array([i % n == n - 1 for i in range(len(batch))], dtype=object)
        return batch, metrics

    trainer.rollout = rollout_with_a_guide_per_group
    batch, metrics = trainer.sample_scored_batch(trainer.prompt_batches())
    scores = batch.batch["token_level_scores"].sum(-1).numpy()
    guided = batch.non_tensor_batch["guided"].astype(bool)
    assert guided.any() and len(batch) == len(scores)  # guides are trained on
    assert metrics["sampling/score_mean"] == pytest.approx(float(scores[~guided].mean()))
    # the reward's extra numbers too: odd_prompts_vary returns each row's prompt index
    indices = np.array([info["index"] for info in batch.non_tensor_batch["extra_info"]], dtype=float)
    assert metrics["sampling/index"] == pytest.approx(float(indices[~guided].mean()))
    assert metrics["reward/index"] == pytest.approx(float(indices.mean()))


def test_dynamic_sampling_names_an_unknown_metric(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, "grpo", ["algorithm.filter_groups.enable=true",
                                                             "algorithm.filter_groups.metric=acc"])
    trainer = build(config, tiny_model_dir)
    with pytest.raises(ValueError, match="metric='acc'.*known: score, seq_final_reward, chars"):
        trainer.sample_scored_batch(trainer.prompt_batches())


def test_the_reference_policy_runs_only_when_a_kl_term_reads_it(tmp_path, tiny_model_dir):
    steps = ["trainer.total_training_steps=1", "trainer.val_before_train=false"]
    plain = build(tiny_config(tmp_path / "a", tiny_model_dir, "grpo", steps + [
        "actor_rollout_ref.actor.ppo_mini_batch_size=8"]), tiny_model_dir)
    (step,) = plain.fit()
    assert not plain.use_reference_policy and "timing_s/ref" not in step
    # exactly on-policy (one mini-batch, one epoch): no old-log-prob pass either
    assert "timing_s/old_log_prob" not in step and "actor/pg_loss" in step
    with_kl = build(tiny_config(tmp_path / "b", tiny_model_dir, "grpo", steps + [
        "actor_rollout_ref.actor.use_kl_loss=true"]), tiny_model_dir)
    (step,) = with_kl.fit()
    assert with_kl.use_reference_policy and "timing_s/ref" in step
    # two mini-batches of 4 prompts per step of 8: the second is off-policy, old log-probs are needed
    assert "timing_s/old_log_prob" in step
