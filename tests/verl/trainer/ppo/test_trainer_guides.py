"""Guided rows (demonstrations a rollout loop put in a GRPO group): the algorithm.guides switches on
hand-computed groups, their metrics, and training on a batch whose row count varies."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ppo_test_setup import tiny_config
from test_ray_trainer import build
from verl.protocol import DataProto
from verl.single_controller.base.decorator import Dispatch, dispatch_args
from verl.trainer.config import compose_config
from verl.trainer.ppo import core_algos
from verl.workers.rollout.base import assemble_output

SQRT3 = math.sqrt(3.0)


def test_keep_unsolved_guides_keeps_a_guide_only_where_no_own_sample_scored():
    index = np.array(["a", "a", "a", "b", "b", "b", "c", "c"])
    scores = np.array([0.0, 0.5, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    guided = np.array([False, False, True, False, False, True, True, True])
    # a: an own sample scored 0.5 -> its guide goes; b: own samples 0 -> kept; c: no own sample -> kept
    assert core_algos.keep_unsolved_guides(index, scores, guided).tolist() == [True, True, False, True, True, True,
                                                                               True, True]
    assert core_algos.keep_unsolved_guides(index, scores, np.zeros(8, dtype=bool)).all()


def test_weight_rows_and_positive_share_by_hand():
    advantages = torch.tensor([[2.0, 2.0, 2.0], [-1.0, -1.0, 0.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 0]])
    guided = np.array([False, False, True])
    weighted = core_algos.weight_rows(advantages, ~guided, 0.25)
    assert weighted.tolist() == [[0.5, 0.5, 0.5], [-0.25, -0.25, 0.0], [1.0, 1.0, 1.0]]
    # positive mass over the mask: row 0 2 + 2, row 2 1 (its other tokens are masked) -> 1 / 5
    assert core_algos.positive_advantage_share(advantages, mask, guided) == pytest.approx(0.2)
    assert core_algos.positive_advantage_share(-advantages.abs(), mask, guided) == 0.0  # no positive mass


def test_rollout_logprob_diff_by_hand():
    rollout = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, 0.0, 0.0]])
    trainer = torch.tensor([[-1.25, -2.0, -9.0], [-1.5, -7.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # |diff| on the mask: 0.25, 0, 1 -> max 1, mean 1.25 / 3
    assert core_algos.rollout_logprob_diff(rollout, trainer, mask) == pytest.approx(
        {"rollout/logprob_diff_max": 1.0, "rollout/logprob_diff_mean": 1.25 / 3})
    assert core_algos.rollout_logprob_diff(rollout, trainer, torch.zeros_like(mask)) == {
        "rollout/logprob_diff_max": 0.0, "rollout/logprob_diff_mean": 0.0}


def test_guided_rows_reads_the_column():
    assert core_algos.guided_rows({}, 3).tolist() == [False] * 3
    assert core_algos.guided_rows({"guided": np.array([True, False], dtype=object)}, 2).tolist() == [True, False]


def guides_trainer(tmp_path, model_dir, overrides=()):
    """A GRPO trainer (in-process fake workers) over 2 prompts x 4 samples."""
    return build(tiny_config(tmp_path, model_dir, "grpo", ["data.train_batch_size=2", "data.shuffle=false",
                                                           "actor_rollout_ref.actor.ppo_mini_batch_size=2",
                                                           *overrides]), model_dir)


def scripted_groups(trainer, scores: list[float], guided: list[bool]):
    """Replace the trainer's rollout and reward: every row has 2 response tokens, its score on the
    last one; `guided` marks the guides."""

    def rollout(prompts):
        rows = len(prompts)
        batch = DataProto.from_dict({"responses": torch.ones(rows, 2, dtype=torch.long),
                                     "response_mask": torch.ones(rows, 2, dtype=torch.long),
                                     "info_mask": torch.zeros(rows, 2, dtype=torch.long)},
                                    non_tensors={**prompts.non_tensor_batch, "guided": np.array(guided, dtype=object)})
        return batch, {}

    def compute_scores(batch):
        token_scores = torch.zeros(len(batch), 2)
        token_scores[:, 1] = torch.tensor(scores)
        batch.batch["token_level_scores"] = token_scores
        return {}

    trainer.rollout, trainer.compute_scores = rollout, compute_scores


# group 1: own samples score 1, 0, 0 and its guide 1; group 2: own samples 0, 0, 0 and its guide 1
SCORES = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
GUIDED = [False, False, False, True] * 2


def scripted_advantages(tmp_path, model_dir, overrides):
    """A guides trainer and its batch of the SCORES / GUIDED groups, advantages computed."""
    trainer = guides_trainer(tmp_path, model_dir, overrides)
    scripted_groups(trainer, SCORES, GUIDED)
    batch, _ = trainer.sample_scored_batch(trainer.prompt_batches())
    batch.batch["token_level_rewards"] = batch.batch["token_level_scores"]
    trainer.compute_advantages(batch)
    return trainer, batch


def test_sampled_weight_scales_the_policys_own_rows_after_grpo(tmp_path, tiny_model_dir):
    trainer, batch = scripted_advantages(tmp_path, tiny_model_dir, ["algorithm.guides.sampled_weight=0.0"])
    # group 1: scores 1, 0, 0, 1: mean 1/2, unbiased std sqrt(1/3) -> +-sqrt(3)/2, then own rows x 0;
    # group 2: 0, 0, 0, 1: mean 1/4, std 1/2 -> -1/2 (x 0) and the guide's 3/2
    expected = [0.0, 0.0, 0.0, SQRT3 / 2, 0.0, 0.0, 0.0, 1.5]
    assert batch.batch["advantages"][:, 0].tolist() == pytest.approx(expected, abs=1e-5)
    assert torch.equal(batch.batch["advantages"][:, 0], batch.batch["advantages"][:, 1])
    metrics = trainer.guide_metrics(batch)
    assert metrics == pytest.approx({"adv/guided_rows": 2.0, "adv/guide_positive_share": 1.0})


def test_guided_weight_scales_the_guides_after_grpo_and_their_share(tmp_path, tiny_model_dir):
    trainer, batch = scripted_advantages(tmp_path, tiny_model_dir, ["algorithm.guides.guided_weight=0.25"])
    # the baselines are the groups' as scored (guides counted in full); then the guides' advantages x 1/4:
    # group 1: +sqrt(3)/2, -sqrt(3)/2, -sqrt(3)/2, then the guide's +sqrt(3)/2 x 1/4;
    # group 2: -1/2 x 3, then the guide's 3/2 x 1/4
    expected = [SQRT3 / 2, -SQRT3 / 2, -SQRT3 / 2, SQRT3 / 8, -0.5, -0.5, -0.5, 0.375]
    assert batch.batch["advantages"][:, 0].tolist() == pytest.approx(expected, abs=1e-5)
    # positive mass: own sqrt(3)/2, guides sqrt(3)/8 + 3/8, two tokens each
    guide_mass = SQRT3 / 8 + 0.375
    assert trainer.guide_metrics(batch)["adv/guide_positive_share"] == pytest.approx(
        guide_mass / (guide_mass + SQRT3 / 2), abs=1e-6)


def test_unsolved_keeps_a_guide_only_in_groups_the_policy_did_not_solve(tmp_path, tiny_model_dir):
    trainer = guides_trainer(tmp_path, tiny_model_dir, ["algorithm.guides.keep=unsolved"])
    scripted_groups(trainer, SCORES, GUIDED)
    batch, metrics = trainer.sample_scored_batch(trainer.prompt_batches())
    assert len(batch) == 7 and batch.non_tensor_batch["guided"].astype(bool).tolist() == [False] * 6 + [True]
    assert metrics["sampling/score_mean"] == pytest.approx(1 / 6)  # the policy's own rows, before the drop
    batch.batch["token_level_rewards"] = batch.batch["token_level_scores"]
    trainer.compute_advantages(batch)
    # group 1 without its guide: 1, 0, 0: mean 1/3, std sqrt(1/3) -> 2/sqrt(3), -1/sqrt(3), -1/sqrt(3);
    # group 2 as with the guide always kept: -1/2, -1/2, -1/2, 3/2
    expected = [2 / SQRT3, -1 / SQRT3, -1 / SQRT3, -0.5, -0.5, -0.5, 1.5]
    assert batch.batch["advantages"][:, 0].tolist() == pytest.approx(expected, abs=1e-5)
    # positive mass: 2/sqrt(3) (own) and 3/2 (guide), 2 tokens each
    assert trainer.guide_metrics(batch) == pytest.approx(
        {"adv/guided_rows": 1.0, "adv/guide_positive_share": 1.5 / (1.5 + 2 / SQRT3)})


def mark_last_of_each_group(trainer):
    rollout = trainer.rollout
    n = trainer.config.actor_rollout_ref.rollout.n

    def marked(prompts):
        batch, metrics = rollout(prompts)
        batch.non_tensor_batch["guided"] = np.array([i % n == n - 1 for i in range(len(batch))], dtype=object)
        return batch, metrics

    trainer.rollout = marked


@pytest.mark.parametrize("mini_batch", [4, 8], ids=["two-mini-batches", "one-on-policy-update"])
def test_a_batch_with_dropped_guides_trains(tmp_path, tiny_model_dir, mini_batch):
    trainer = build(tiny_config(tmp_path, tiny_model_dir, "grpo", [
        "algorithm.guides.keep=unsolved", "trainer.total_training_steps=1", "trainer.val_before_train=false",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={mini_batch}"]), tiny_model_dir)
    mark_last_of_each_group(trainer)
    trained_rows = []
    train_on = trainer.train_on
    trainer.train_on = lambda batch, timing: trained_rows.append(len(batch)) or train_on(batch, timing)
    (step,) = trainer.fit()
    # contains_target rewards about half the samples: most groups are solved and lose their guide
    assert trained_rows == [8 * 3 + step["adv/guided_rows"]] and trained_rows[0] < 8 * 4
    assert step["response_length/mean"] > 0 and math.isfinite(step["actor/pg_loss"])
    assert trainer.recompute_old_log_probs == (mini_batch == 4)
    # either path (the trainer's old log-probs, or the on-policy update's own) compares the sampler's
    assert step["rollout/logprob_diff_mean"] <= step["rollout/logprob_diff_max"] < 1e-4


def test_one_worker_gets_a_varying_batch_unpadded():
    batch = DataProto.from_dict({"x": torch.arange(7)})
    (per_rank, pad) = dispatch_args(Dispatch.DP_COMPUTE_PROTO, 1, (batch,), {})
    assert pad == 0 and per_rank[0][0][0].batch["x"].tolist() == list(range(7))


def test_config_check_names_the_guides_keys(tmp_path):
    base = [f"data.train_files={tmp_path}", f"data.val_files={tmp_path}", f"actor_rollout_ref.model.path={tmp_path}"]
    with pytest.raises(ValueError, match=r"algorithm\.guides\.keep=unsolved with 2 workers .* not supported"):
        compose_config(base + ["algorithm.guides.keep=unsolved", "trainer.n_gpus_per_node=2"])
    with pytest.raises(ValueError, match=r"algorithm\.guides\.keep='sometimes': expected one of always, unsolved"):
        compose_config(base + ["algorithm.guides.keep=sometimes"])
    with pytest.raises(ValueError, match=r"algorithm\.guides\.sampled_weight=1\.5: expected a share"):
        compose_config(base + ["algorithm.guides.sampled_weight=1.5"])
    with pytest.raises(ValueError, match=r"algorithm\.guides\.guided_weight=-0\.5: expected a share"):
        compose_config(base + ["algorithm.guides.guided_weight=-0.5"])
    assert compose_config(base + ["algorithm.guides.keep=unsolved"]).algorithm.guides.keep == "unsolved"


def test_a_guide_in_a_failed_group_by_hand():
    grpo = core_algos.compute_grpo_outcome_advantage
    # scores 0, 0, 0, 1: mean 1/4, unbiased std 1/2 -> (1 - 1/4) / (1/2) = 3/2; of 8 rows: 7/8 / sqrt(1/8)
    assert core_algos.unsolved_group_guide_advantage(grpo, 4) == pytest.approx(1.5, abs=1e-5)
    assert core_algos.unsolved_group_guide_advantage(grpo, 8) == pytest.approx(7 / math.sqrt(8), abs=1e-5)
    # Dr. GRPO: the score less the mean, 1 - 1/4
    assert core_algos.unsolved_group_guide_advantage(grpo, 4, norm_adv_by_std_in_grpo=False) == pytest.approx(0.75)


def demonstrations_of(prompts, response: list[int]) -> DataProto:
    """Every prompt answered by the same `response` tokens, marked guided, as a rollout loop's
    `demonstrations` gives them."""
    responses = torch.tensor([response] * len(prompts))
    part = prompts.select(batch_keys=["input_ids", "attention_mask", "position_ids"], non_tensor_batch_keys=[],
                          meta_info_keys=[])
    batch = assemble_output(part, responses, torch.ones_like(responses))
    batch.batch["info_mask"] = torch.zeros_like(responses)
    batch.batch["rollout_log_probs"] = torch.zeros(responses.shape)
    batch.non_tensor_batch = {**prompts.non_tensor_batch, "guided": np.array([True] * len(prompts), dtype=object)}
    batch.meta_info = {"metrics": {"env/guided_ratio": 1.0}}
    return batch


def guides_only_trainer(tmp_path, model_dir, response, overrides=()):
    trainer = guides_trainer(tmp_path, model_dir, ["algorithm.guides.only=true", *overrides])

    def rollout(_):
        raise AssertionError("algorithm.guides.only samples nothing")

    class Asleep:
        def wake(self):
            raise AssertionError("algorithm.guides.only leaves the rollout servers asleep")

    trainer.rollout = rollout
    trainer.servers = Asleep()
    trainer.rollout_loop.demonstrations = lambda prompts: demonstrations_of(prompts, response)
    return trainer


def test_guides_only_trains_on_the_guides_at_a_failed_groups_advantage(tmp_path, tiny_model_dir):
    trainer = guides_only_trainer(tmp_path, tiny_model_dir, [5, 6, 7], ["algorithm.guides.guided_weight=0.5"])
    batch, metrics = trainer.next_scored_batch(trainer.prompt_batches())
    # one row per prompt, with a group id of its own; nothing sampled, so no sampling metrics
    assert len(batch) == 2 and len(set(batch.non_tensor_batch["uid"])) == 2
    assert metrics["env/guided_ratio"] == 1.0 and not any(key.startswith("sampling/") for key in metrics)
    batch.batch["token_level_rewards"] = batch.batch["token_level_scores"]
    trainer.compute_advantages(batch)
    # rollout.n = 4: a guide among three failed samples gets 3/2, times guided_weight 1/2, on every token
    assert torch.allclose(batch.batch["advantages"], torch.full((2, 3), 0.75), atol=1e-5)
    assert trainer.guide_metrics(batch) == {"adv/guided_rows": 2.0, "adv/guide_positive_share": 1.0}


def test_guides_only_raises_the_guides_likelihood(tmp_path, tiny_model_dir):
    response = [5, 6, 7, 8]
    trainer = guides_only_trainer(tmp_path, tiny_model_dir, response,
                                  ["trainer.total_training_steps=3", "trainer.val_before_train=false"])
    probe = demonstrations_of(next(iter(trainer.train_loader)), response)
    before = trainer.actor_rollout_wg.compute_log_prob(probe).batch["old_log_probs"].mean()
    steps = trainer.fit()
    after = trainer.actor_rollout_wg.compute_log_prob(probe).batch["old_log_probs"].mean()
    assert [step["adv/guided_rows"] for step in steps] == [2.0] * 3
    assert all(math.isfinite(step["actor/pg_loss"]) for step in steps)
    assert after > before + 1.0, (float(before), float(after))


def test_guides_only_takes_a_group_estimator_on_one_worker(tmp_path):
    base = [f"data.train_files={tmp_path}", f"data.val_files={tmp_path}", f"actor_rollout_ref.model.path={tmp_path}",
            "algorithm.guides.only=true", "actor_rollout_ref.rollout.n=4"]
    with pytest.raises(ValueError, match=r"algorithm\.guides\.only=true with algorithm\.adv_estimator=gae: .* group"):
        compose_config(base + ["algorithm.adv_estimator=gae"])
    with pytest.raises(ValueError, match=r"algorithm\.guides\.only=true with 2 workers .* not supported"):
        compose_config(base + ["algorithm.adv_estimator=grpo", "trainer.n_gpus_per_node=2"])
    assert compose_config(base + ["algorithm.adv_estimator=grpo"]).algorithm.guides.only is True


def test_guides_only_with_an_unknown_estimator_reports_the_estimator_alone(tmp_path):
    base = [f"data.train_files={tmp_path}", f"data.val_files={tmp_path}", f"actor_rollout_ref.model.path={tmp_path}",
            "algorithm.guides.only=true", "actor_rollout_ref.rollout.n=4", "algorithm.adv_estimator=nope"]
    with pytest.raises(ValueError) as error:
        compose_config(base)
    assert "unknown advantage estimator 'nope'" in str(error.value)
    assert "guides.only=true with" not in str(error.value)
