"""The actor's update on batches a trainer may hand it: the on-policy update compares the engine's
log-probs with its own forward (rollout/logprob_diff_*), and a batch whose row count is no multiple
of the mini-batch (guides dropped) still trains, in one update or in several."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from test_fsdp_workers import actor_config, make_batch
from verl.protocol import DataProto
from verl.workers.actor.dp_actor import DataParallelPPOActor, policy_loss_mask

ROWS = 7  # one fewer than the mini-batch of 8


@pytest.fixture
def actor(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = actor_config(tiny_model_dir).actor
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    return DataParallelPPOActor(config, model, optimizer, mini_batch_size=8)


def odd_batch(tiny_model_dir) -> DataProto:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    full = make_batch(len(tok), tok.pad_token_id)
    data = DataProto.from_dict(dict(full[:ROWS].batch), meta_info={"temperature": 1.0})
    advantages = torch.linspace(-1.0, 1.0, ROWS).unsqueeze(-1)
    data.batch["advantages"] = advantages.expand_as(data.batch["response_mask"]).clone()
    return data


def test_on_policy_update_reports_the_engine_log_prob_gap(tiny_model_dir, actor):
    data = odd_batch(tiny_model_dir)
    own, _ = actor.compute_log_prob(data, micro_batch_size=ROWS)
    scored = policy_loss_mask(data, actor.state_masking).bool()
    engine = own.clone()
    first = scored[1].nonzero()[0, 0]
    engine[1, first] += 0.5  # one sampled token off by 0.5
    engine[ROWS - 1][scored[ROWS - 1]] = -100.0  # a guide: its numbers are not the policy's
    data.batch["rollout_log_probs"] = engine
    data.non_tensor_batch["guided"] = np.array([False] * (ROWS - 1) + [True], dtype=object)
    metrics = actor.update_policy(data)  # no old_log_probs: one update, on-policy
    counted = int(scored[:ROWS - 1].sum())
    assert metrics["rollout/logprob_diff_max"] == pytest.approx(0.5, abs=1e-5)
    assert metrics["rollout/logprob_diff_mean"] == pytest.approx(0.5 / counted, abs=1e-5)
    assert math.isfinite(metrics["actor/grad_norm"]) and metrics["actor/grad_norm"] > 0


def test_uneven_mini_batches_train_and_leave_the_gap_to_the_trainer(tiny_model_dir, actor):
    data = odd_batch(tiny_model_dir)
    actor.mini_batch_size = 4  # mini-batches of 4 and 3 rows
    data.batch["old_log_probs"], _ = actor.compute_log_prob(data, micro_batch_size=ROWS)
    data.batch["rollout_log_probs"] = data.batch["old_log_probs"].clone()
    before = [p.detach().clone() for p in actor.module.parameters()]
    metrics = actor.update_policy(data)
    assert not any(key.startswith("rollout/") for key in metrics)  # the trainer compares old_log_probs
    assert math.isfinite(metrics["actor/grad_norm"])
    assert any(not torch.equal(b, p) for b, p in zip(before, actor.module.parameters()))
