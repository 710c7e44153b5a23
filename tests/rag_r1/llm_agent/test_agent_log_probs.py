"""Sampler = trainer: the log-probs a multi-turn agent rollout records while it samples (HFRollout,
continuing each turn from the cached keys/values) are the ones the actor computes on the finished
batch, token by token."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rag_r1.llm_agent.generation import Trajectory
from rag_r1.llm_agent.guides import Guide, as_trajectory
from rag_r1.llm_agent.loop import SearchAgentLoop, to_dataproto
from rag_r1.llm_agent.prompts import invalid_action_note, user_content
from test_generation import FakeRetriever
from verl.trainer.config import schema_node
from verl.workers.actor.dp_actor import DataParallelPPOActor
from verl.workers.rollout.base import build_prompt_batch
from verl.workers.rollout.hf_rollout import HFRollout

QUESTIONS = ["Who was born first", "Which city is the capital of France", "What year did the film come out"]
TEMPERATURE = 0.7


def agent_config(max_turns: int):
    return schema_node("", {
        "data": {"max_prompt_length": 2048, "max_start_length": 1024, "max_response_length": 12},
        "agent": {"mode": "multi", "max_turns": max_turns, "topk": 1},
        # top-k / top-p shape what is sampled, not the recorded log-probs (those of the whole distribution)
        "actor_rollout_ref": {"rollout": {"do_sample": True, "temperature": TEMPERATURE, "top_p": 0.9, "top_k": 50,
                                          "enable_prefix_caching": True, "response_length": 12}},
    })


def test_three_turn_rollout_log_probs_equal_the_actors(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = agent_config(max_turns=2)  # two turns, then the final one
    rollout = HFRollout(model, tokenizer, config.actor_rollout_ref.rollout)
    retriever = FakeRetriever()
    loop = SearchAgentLoop(config, tokenizer, rollout.generate_sequences, retriever=retriever)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": user_content(q, "multi")}],
                                             add_generation_prompt=True, tokenize=True, return_dict=False)
               for q in QUESTIONS for _ in range(2)]
    batch = loop.run(build_prompt_batch(prompts, tokenizer.pad_token_id))

    # The random policy writes no action: each later turn follows a corrective note (info_mask 1), and
    # the engine continues every row from the keys/values the previous turn left.
    assert list(batch.non_tensor_batch["turns"]) == [3] * len(prompts)
    note = tokenizer.encode(invalid_action_note("multi"), add_special_tokens=False)
    assert int(batch.batch["info_mask"].sum()) == 2 * len(note) * len(prompts)
    # prompts encoded once; later turns encode at most the last sampled token and the note
    assert rollout.prefill_tokens <= sum(len(p) for p in prompts) + 2 * len(prompts) * (len(note) + 1)

    actor = DataParallelPPOActor(config.actor_rollout_ref.actor, model)
    batch.meta_info["temperature"] = TEMPERATURE
    trainer_log_probs, _ = actor.compute_log_prob(batch, micro_batch_size=4)
    generated = batch.batch["response_mask"] * (1 - batch.batch["info_mask"])
    recorded = batch.batch["rollout_log_probs"]
    assert recorded.dtype == torch.float32 and recorded.shape == batch.batch["responses"].shape
    assert torch.equal(recorded == 0, generated == 0)  # 0 exactly where the policy wrote nothing
    assert (recorded - trainer_log_probs).abs().max() < 1e-4
    assert retriever.calls == []


def test_guides_and_observations_carry_no_sampled_log_prob():
    prompt = [1, 2]
    sampled = Trajectory(prompt=prompt)
    sampled.append_generated([5, 6], [-0.5, -1.5])
    sampled.append_observation([7])
    guide = as_trajectory(prompt, Guide(response=[8, 9, 10], info_mask=[0, 1, 0]))
    batch = to_dataproto(build_prompt_batch([prompt, prompt], pad_token_id=0), [sampled, guide], pad_token_id=0)
    assert batch.batch["rollout_log_probs"].tolist() == [[-0.5, -1.5, 0.0], [0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="2 generated tokens with 1 log-probs"):
        sampled.append_generated([5, 6], [-0.5])
