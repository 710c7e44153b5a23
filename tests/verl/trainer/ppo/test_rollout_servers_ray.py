"""rollout.mode=async through Ray: main_ppo's threaded actor group hosts an HF rollout server, and the
driver's ServerPool awaits its actors' ObjectRefs; concurrent requests are batched by the server and
generate what the batch engine generates (greedy, tiny model)."""
from __future__ import annotations

import pytest
import ray
import torch
from omegaconf import OmegaConf, open_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

from ppo_test_setup import tiny_config
from verl.trainer.main_ppo import build_worker_groups
from verl.trainer.ppo.rollout_servers import ServerPool
from verl.workers.rollout.base import build_prompt_batch
from verl.workers.rollout.hf_rollout import HFRollout


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_threaded_actor_group_serves_concurrent_requests(tmp_path, tiny_model_dir, ray_session):
    config = tiny_config(tmp_path, tiny_model_dir, "grpo", ["actor_rollout_ref.rollout.mode=async",
                                                            "actor_rollout_ref.rollout.max_num_seqs=8"])
    OmegaConf.resolve(config)
    with open_dict(config):
        config.actor_rollout_ref.actor.optim.total_training_steps = 1
    config.trainer.n_gpus_per_node = 1
    actor_group, _ = build_worker_groups(config)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rollout = config.actor_rollout_ref.rollout
    pool = ServerPool.of_worker_group(actor_group, rollout, tokenizer.pad_token_id)
    prompts = build_prompt_batch([tokenizer.encode(text, add_special_tokens=False) for text in
                                  ("Who was born first?", "Which city", "What year did the film come out?", "Say")],
                                 tokenizer.pad_token_id)
    prompts.meta_info = {"max_new_tokens": 8, "do_sample": False}
    pool.wake()
    out = pool.generate_batch(prompts)

    [metrics] = actor_group.server_metrics()
    assert metrics["server/max_batch_rows"] > 1  # the requests were in flight together
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reference = HFRollout(model, tokenizer, rollout).generate_sequences(prompts)
    assert torch.equal(out.batch["responses"], reference.batch["responses"])
    assert (out.batch["rollout_log_probs"] - reference.batch["rollout_log_probs"]).abs().max() < 1e-4
