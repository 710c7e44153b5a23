"""actor_rollout_ref.rollout.lag=1 (one step off) through the trainer: four GRPO steps with the tiny
model, the REAL actor worker (FSDP2 over one gloo rank in this process, as a one-rank worker group
hands it its calls) hosting its HF rollout server, SingleTurnLoop, sampled rollouts.

A gate makes every update but the last wait until the next step's rollout has a request in flight,
and holds that request until the update is done: so the test fails unless the rollout runs while
the actor updates, and the held request is generated after the update, when a server that reloaded
the actor's weights would sample with the new policy.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest
import torch
from transformers import AutoModelForCausalLM

from ppo_test_setup import tiny_config
from verl.trainer.config import compose_config
from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.trainer.ppo.reward import RewardManager, load_reward_function
from verl.trainer.ppo.rollout_servers import ServerPool
from verl.utils import checkpoint
from verl.utils.dataset import RLHFDataset
from verl.utils.tracking import Tracking
from verl.workers.fsdp_workers import ActorRolloutRefWorker

STEPS = 4
WAIT_S = 60  # a gate wait that times out means the rollout and the update did not overlap


class Gate:
    """While armed: the update waits for a request, and the requests wait for the update to end."""

    def __init__(self):
        self.armed = False
        self.requested, self.updated = threading.Event(), threading.Event()
        self.overlapped: list[bool] = []  # per armed update: a request of the next rollout came first

    def arm(self) -> None:
        self.requested.clear()
        self.updated.clear()
        self.armed = True

    def request(self) -> None:
        if self.armed:
            self.requested.set()
            self.updated.wait(WAIT_S)

    def update(self, update, data):
        if not self.armed:
            return update(data)
        self.overlapped.append(self.requested.wait(WAIT_S))
        try:
            return update(data)
        finally:
            self.armed = False
            self.updated.set()


def response_log_probs(model_dir, weights: dict, batch) -> torch.Tensor:
    """log p(response token) [B, R] under `weights`, temperature 1 (what the server samples with)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.load_state_dict(weights)
    responses = batch.batch["responses"]
    with torch.no_grad():
        logits = model(input_ids=batch.batch["input_ids"], attention_mask=batch.batch["attention_mask"],
                       position_ids=batch.batch["position_ids"]).logits.float()
    logits = logits[:, -responses.shape[1] - 1:-1]
    return torch.log_softmax(logits, dim=-1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)


def test_one_step_off_trains_each_batch_one_update_after_its_sampler(tmp_path, tiny_model_dir, one_rank):
    config = tiny_config(tmp_path, tiny_model_dir, "grpo", [
        "actor_rollout_ref.rollout.mode=async", "actor_rollout_ref.rollout.lag=1", "data.train_batch_size=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4", f"trainer.total_training_steps={STEPS}",
        "trainer.val_before_train=false", "trainer.save_freq=2",
        "actor_rollout_ref.rollout.dtype=float32"])  # the log-probs are recomputed below in fp32
    torch.manual_seed(0)
    worker = ActorRolloutRefWorker(config.actor_rollout_ref, role="actor_rollout")
    worker.init_model()
    tokenizer = worker.tokenizer
    pool = ServerPool.of_local_worker(worker, config.actor_rollout_ref.rollout, tokenizer.pad_token_id)
    reward = RewardManager(tokenizer, load_reward_function(config.custom_reward_function.path,
                                                           config.custom_reward_function.name))
    trainer = RayPPOTrainer(config, tokenizer, worker, None, reward, None,
                            RLHFDataset(config.data.train_files, tokenizer, config.data), None,
                            tracker=Tracking("t", "t", backends=[]), servers=pool)

    gate, trained, snapshots = Gate(), [], {}
    generate, update, sampling_ahead = worker.server_generate, worker.update_actor, trainer.sampling_ahead

    def gated_generate(*args):
        gate.request()
        return generate(*args)

    def recorded_update(data):
        # the weights this update starts from (copies: on one rank the gathered tensors are the parameters)
        snapshots[worker.weights_version] = {k: v.clone() for k, v in worker.full_state_dict().items()}
        trained.append((worker.weights_version, data))
        return gate.update(update, data)

    @contextmanager
    def armed_sampling_ahead(prompt_batches, timing):
        if trainer.global_steps < STEPS:  # the last step has no next rollout to wait for
            gate.arm()
        with sampling_ahead(prompt_batches, timing):
            yield

    worker.server_generate, worker.update_actor = gated_generate, recorded_update
    trainer.sampling_ahead = armed_sampling_ahead
    history = trainer.fit()

    assert gate.overlapped == [True] * (STEPS - 1)  # each update ran while the next rollout was generating
    # (the version the update starts from, the version the batch was sampled with): one step behind
    # from the second step on; the first step's batch had nothing to overlap with
    versions = [(actor, set(data.non_tensor_batch["weights_version"].tolist())) for actor, data in trained]
    assert versions == [(0, {0}), (1, {0}), (2, {1}), (3, {2})]
    for actor, data in trained:
        rollout_log_probs = data.batch["rollout_log_probs"]
        assert torch.equal(data.batch["old_log_probs"], rollout_log_probs)  # no recomputation
        [sampler] = set(data.non_tensor_batch["weights_version"].tolist())
        mask = data.batch["response_mask"].bool()
        # the server sampled with its copy of version `sampler`, also for the requests held until the
        # FSDP actor had updated past it
        under_sampler = response_log_probs(tiny_model_dir, snapshots[sampler], data)
        assert (under_sampler - rollout_log_probs)[mask].abs().max() < 1e-4
        if sampler != actor:
            under_actor = response_log_probs(tiny_model_dir, snapshots[actor], data)
            assert (under_actor - rollout_log_probs)[mask].abs().max() > 1e-2
    # the ratio against the sampler is not 1 at the first mini-batch of a stale batch: it clips
    assert [h["actor/pg_clipfrac"] > 0 for h in history] == [False, True, True, True]
    assert [("timing_s/gen_ahead" in h, "timing_s/gen_ahead_wait" in h) for h in history] == \
        [(True, True)] * (STEPS - 1) + [(False, False)]
    # step 2's checkpoint resumes at step 3's prompts, which were sampled ahead but not trained
    state = checkpoint.load_trainer_state(tmp_path / "ckpt" / "global_step_2")
    assert state["dataloader"] == {"epoch": 0, "batches_served": 2}


REQUIRED = ["data.train_files=t.parquet", "data.val_files=v.parquet", "actor_rollout_ref.model.path=m"]


@pytest.mark.parametrize("overrides, message", [
    (["actor_rollout_ref.rollout.lag=2"], "actor_rollout_ref.rollout.lag=2: expected 0 or 1"),
    (["actor_rollout_ref.rollout.lag=1"], "actor_rollout_ref.rollout.lag=1 needs actor_rollout_ref.rollout.mode=async"),
    (["actor_rollout_ref.rollout.mode=async", "actor_rollout_ref.rollout.lag=1", "+agent.guide_file=guides.jsonl"],
     r"actor_rollout_ref.rollout.lag=1 with agent.guide_file='guides.jsonl': a guide's tokens were sampled by no "
     r"policy, so one step off has no sampler log-prob for their ratio; use lag 0 with guides"),
])
def test_a_lag_the_trainer_cannot_run_is_refused_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        compose_config(REQUIRED + overrides)
