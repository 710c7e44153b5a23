"""RL learns, and this test fails when it stops learning: GRPO with LoRA on the tiny model, through
the search agent's multi-turn loop, the real actor worker (FSDP2 over one gloo rank, in this
process) and the trainer's fit(), on the same prompts every step.

The reward is a property of the policy's own tokens only: the share of `TARGET` characters in the
text it generated (the corrective notes between its turns are left out). The random policy writes
no action, so every trajectory is two turns: a first one, the note (info_mask 1), then the final
one. Two broken variants must NOT learn: with every gradient scaled to zero before the step
(`grad_clip=0`: the adapters stay at lora_B = 0, the base policy), and with the advantages placed
on the observation tokens instead of the policy's (the loop's info_mask inverted).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

from rag_r1.llm_agent.loop import SearchAgentLoop
from rag_r1.llm_agent.modes import build_mode
from rag_r1.llm_agent.prompts import invalid_action_note
from scripts.data_process.search_data import convert_questions, write_parquet
from test_generation import FakeRetriever
from verl.trainer.config import compose_config
from verl.trainer.ppo.ray_trainer import RayPPOTrainer, total_training_steps
from verl.trainer.ppo.reward import RewardManager, load_reward_function
from verl.utils.dataset import RLHFDataset
from verl.utils.tracking import Tracking
from verl.workers.fsdp_workers import ActorRolloutRefWorker

TARGET = "e"
NOTE = invalid_action_note("multi")
QUESTIONS = ["Who wrote the novel", "Where is the tower"]
STEPS = 10


def target_share(data_source, solution_str, ground_truth, extra_info=None) -> float:
    """The share of TARGET among the characters the policy wrote (the notes removed)."""
    own = solution_str.replace(NOTE, "")
    return own.count(TARGET) / max(len(own), 1)


def sharpened_model(model_dir, out_dir: Path, scale: float = 8.0) -> Path:
    """The tiny model with its final norm's weight times `scale`. The random model's logits lie within
    about +-1 (a 64-wide residual through a unit-weight norm into 0.02-scaled tied embeddings), and
    adapters on the linear layers cannot leave that range; scaled, they can move a token's logit by
    several units, as in a trained model."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.mul_(scale)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return sharpened_model(tiny_model_dir, tmp_path_factory.mktemp("sharp_model"))


def learning_config(tmp_path: Path, model_dir, overrides=()):
    data = tmp_path / "train.parquet"
    write_parquet(convert_questions([{"question": q, "golden_answers": ["x"]} for q in QUESTIONS], "toy",
                                    build_mode("multi"), "train"), data)
    config = compose_config([
        f"data.train_files={data}", f"data.val_files={data}", f"data.train_batch_size={len(QUESTIONS)}",
        "data.shuffle=false", "data.max_prompt_length=1024", "data.max_start_length=512",
        "data.max_response_length=8",
        f"actor_rollout_ref.model.path={model_dir}", "actor_rollout_ref.model.lora_rank=8",
        "actor_rollout_ref.model.lora_alpha=16", "actor_rollout_ref.actor.fsdp_config.dtype=float32",
        "actor_rollout_ref.actor.optim.lr=5e-2", "actor_rollout_ref.actor.optim.weight_decay=0.0",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={len(QUESTIONS)}",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=64",
        "actor_rollout_ref.rollout.n=8", "actor_rollout_ref.rollout.loop=rag_r1.llm_agent.loop:SearchAgentLoop",
        "algorithm.adv_estimator=grpo", "agent.mode=multi", "agent.max_turns=1",
        "retriever.url=http://127.0.0.1:1/retrieve",  # replaced by a scripted retriever below
        f"custom_reward_function.path={Path(__file__).resolve()}", "custom_reward_function.name=target_share",
        f"trainer.total_training_steps={STEPS}", "trainer.val_before_train=false", "trainer.logger=[console]",
        f"trainer.default_local_dir={tmp_path / 'ckpt'}", *overrides])
    OmegaConf.resolve(config)  # as main_ppo: the worker gets a plain subtree
    with open_dict(config):
        config.actor_rollout_ref.actor.optim.total_training_steps = STEPS
    return config


def observations_scored(loop: SearchAgentLoop) -> None:
    """The broken variant: the loop marks the observation tokens as the policy's and the other way round."""
    run = loop.run

    def inverted(prompts, validate=False):
        batch = run(prompts, validate)
        batch.batch["info_mask"] = batch.batch["response_mask"] - batch.batch["info_mask"]
        return batch

    loop.run = inverted


def train(tmp_path: Path, model_dir, overrides=(), break_loop=None) -> list[dict]:
    torch.manual_seed(0)
    config = learning_config(tmp_path, model_dir, overrides)
    # a worker group of one rank hands each call's batch whole to its worker: the worker stands in for it
    worker = ActorRolloutRefWorker(config.actor_rollout_ref, role="actor_rollout")
    worker.init_model()
    tokenizer = worker.tokenizer
    reward = RewardManager(tokenizer, load_reward_function(config.custom_reward_function.path,
                                                           config.custom_reward_function.name), num_examine=0)
    dataset = RLHFDataset(config.data.train_files, tokenizer, config.data)
    assert total_training_steps(config, len(dataset)) == STEPS
    trainer = RayPPOTrainer(config, tokenizer, worker, None, reward, None, dataset, None,
                            tracker=Tracking("t", "t", backends=[]))
    trainer.rollout_loop = SearchAgentLoop(config, tokenizer, worker.generate_sequences, retriever=FakeRetriever())
    if break_loop is not None:
        break_loop(trainer.rollout_loop)
    return trainer.fit()


def rise(history: list[dict]) -> float:
    """Mean reward of the last 3 steps minus that of the first 3."""
    scores = [h["sampling/score_mean"] for h in history]
    return float(np.mean(scores[-3:]) - np.mean(scores[:3]))


def test_grpo_with_lora_learns_through_the_agent_loop(tmp_path, sharp_model_dir, one_rank):
    history = train(tmp_path, sharp_model_dir)
    print("learning", [round(h["sampling/score_mean"], 3) for h in history])
    assert len(history) == STEPS
    assert all(h["env/turns_mean"] == 2.0 for h in history)  # every trajectory took two turns
    assert rise(history) > 0.12  # observed 0.23; a policy that does not change moves it by < 0.01
    # the on-policy update's own forward scores the sampled tokens as the engine sampled them
    assert max(h["rollout/logprob_diff_max"] for h in history) < 1e-3


@pytest.mark.parametrize("broken", ["frozen_adapters", "observation_tokens"])
def test_broken_learning_does_not_rise(tmp_path, sharp_model_dir, one_rank, broken):
    if broken == "frozen_adapters":
        history = train(tmp_path, sharp_model_dir, ["actor_rollout_ref.actor.grad_clip=0"])
    else:
        history = train(tmp_path, sharp_model_dir, break_loop=observations_scored)
    print(broken, [round(h["sampling/score_mean"], 3) for h in history])
    assert rise(history) < 0.05  # observed 0.007 and -0.003
