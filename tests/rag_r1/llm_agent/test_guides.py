"""Guide trajectories: gold SFT trajectories take the last place of their prompt's training group."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rag_r1.llm_agent.guides import load_guides
from rag_r1.llm_agent.loop import SearchAgentLoop
from rag_r1.llm_agent.modes import mode_of
from rag_r1.llm_agent.prompts import user_content
from rag_r1.llm_agent.config import AgentConfig
from rag_r1.reward import compute_score
from verl.trainer.config import rollout_config, schema_node
from verl.workers.rollout.base import build_prompt_batch

from test_generation import FakeRetriever

OBSERVATION = '\n<information>\n{"query": ["Paris", "France"], "documents": ["Doc 1(Title: Paris) capital"]}\n</information>\n'
TURNS = ["<think> Two facts. </think>\n<search> Paris, France </search>", OBSERVATION,
         "<think> Found it. </think>\n<answer> Paris </answer>"]


def write_guides(path, questions):
    rows = [{"conversations": [{"from": "human", "value": user_content(q, "multi")},
                               {"from": "gpt", "value": TURNS[0]}, {"from": "observation", "value": TURNS[1]},
                               {"from": "gpt", "value": TURNS[2]}]} for q in questions]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prompt_ids(tokenizer, question):
    text = tokenizer.apply_chat_template([{"role": "user", "content": user_content(question, "multi")}],
                                         add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_guide_is_the_conversation_with_its_observation_masked(tiny_model_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    mode = mode_of(AgentConfig(64, 64, 8))
    guides = load_guides(write_guides(tmp_path / "g.jsonl", ["Where is Paris?"]), tok, mode.queries_of)
    guide = guides[tuple(prompt_ids(tok, "Where is Paris?"))]
    assert tok.decode(guide.response) == "".join(TURNS) + tok.eos_token
    observed = tok.decode([t for t, m in zip(guide.response, guide.info_mask) if m])
    assert observed == OBSERVATION
    assert guide.queries == [["Paris", "France"]]
    assert compute_score("demo", tok.decode(guide.response, skip_special_tokens=True), {"target": ["Paris"]})["score"] == 1.0


def test_training_groups_get_their_guide_and_validation_does_not(tiny_model_dir, tmp_path):
    from verl.workers.rollout.hf_rollout import HFRollout

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    path = write_guides(tmp_path / "g.jsonl", ["Where is Paris?"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = schema_node("", {
        "data": {"max_prompt_length": 512, "max_start_length": 256, "max_response_length": 4},
        "agent": {"max_turns": 1, "guide_file": str(path)},
        "actor_rollout_ref": {"rollout": {"do_sample": False, "val_kwargs": {"do_sample": False}}},
    })
    rollout = HFRollout(model, tok, rollout_config(response_length=4))
    loop = SearchAgentLoop(cfg, tok, rollout.generate_sequences, retriever=FakeRetriever())
    questions = ["Where is Paris?", "Where is Paris?", "Where is Rome?", "Where is Rome?"]
    prompts = build_prompt_batch([prompt_ids(tok, q) for q in questions], tok.pad_token_id)
    prompts.non_tensor_batch["uid"] = np.array(["a", "a", "b", "b"], dtype=object)

    out = loop.run(prompts)
    assert list(out.non_tensor_batch["guided"]) == [False, True, False, False]
    assert out.meta_info["metrics"]["env/guided_ratio"] == 0.25
    guide = next(iter(loop.guides.values()))
    n = len(guide.response)
    assert out.batch["responses"][1, :n].tolist() == guide.response
    assert out.batch["info_mask"][1, :n].tolist() == guide.info_mask
    assert out.batch["response_mask"][1].sum() == n
    assert out.non_tensor_batch["search_calls"][1] == 1 and out.non_tensor_batch["answered"][1]
    # the policy's own sample of the same group is untouched: a random model's 4 tokens, then a note
    assert not torch.equal(out.batch["responses"][0, :n], out.batch["responses"][1, :n])

    validation = loop.run(prompts, validate=True)
    assert not any(validation.non_tensor_batch["guided"])
    assert "env/guided_ratio" not in validation.meta_info["metrics"]


def guide_loop(tiny_model_dir, tmp_path, guides_only: bool, questions=("Where is Paris?",)):
    """A search agent over the tiny model whose engine must never run, guides for `questions`."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = schema_node("", {
        "data": {"max_prompt_length": 512, "max_start_length": 256, "max_response_length": 4},
        "agent": {"max_turns": 1, "guide_file": str(write_guides(tmp_path / "g.jsonl", questions))},
        "algorithm": {"guides": {"only": guides_only}},
    })

    def generate(_):
        raise AssertionError("demonstrations sample nothing")

    return SearchAgentLoop(cfg, tok, generate, retriever=FakeRetriever()), tok


def test_demonstrations_are_the_guides_of_the_prompts_that_have_one(tiny_model_dir, tmp_path):
    loop, tok = guide_loop(tiny_model_dir, tmp_path, True)
    questions = ["Where is Rome?", "Where is Paris?", "Where is Oslo?"]
    prompts = build_prompt_batch([prompt_ids(tok, q) for q in questions], tok.pad_token_id)
    prompts.non_tensor_batch["uid"] = np.array(["r", "p", "o"], dtype=object)

    out = loop.demonstrations(prompts)
    guide = next(iter(loop.guides.values()))
    n = len(guide.response)
    assert len(out) == 1 and list(out.non_tensor_batch["uid"]) == ["p"]
    assert list(out.non_tensor_batch["guided"]) == [True]
    assert out.batch["responses"][0, :n].tolist() == guide.response
    assert out.batch["info_mask"][0, :n].tolist() == guide.info_mask
    assert out.batch["response_mask"][0].sum() == n
    assert out.batch["prompts"][0].tolist() == prompts.batch["input_ids"][1].tolist()
    assert out.non_tensor_batch["search_calls"][0] == 1 and out.non_tensor_batch["answered"][0]
    assert out.meta_info["metrics"] == {"env/guided_ratio": 1 / 3}

    unguided = build_prompt_batch([prompt_ids(tok, "Where is Rome?")], tok.pad_token_id)
    with pytest.raises(ValueError, match=r"none of 1 training prompts has a guide in agent\.guide_file="):
        loop.demonstrations(unguided)


def test_guides_only_needs_a_guide_file(tiny_model_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = schema_node("", {"agent": {"max_turns": 1}, "algorithm": {"guides": {"only": True}}})
    with pytest.raises(ValueError, match=r"algorithm\.guides\.only=true trains on the guides alone: set agent\.guide_file"):
        SearchAgentLoop(cfg, tok, lambda _: None, retriever=FakeRetriever())
