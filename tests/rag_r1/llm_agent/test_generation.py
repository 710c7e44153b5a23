"""GenerationManager's caps, final turn and failures, with an in-process retriever (HTTP traffic is
tested against the real server in test_loop.py)."""
from __future__ import annotations

import pytest
import torch

from rag_r1.llm_agent.config import AgentConfig
from rag_r1.llm_agent.generation import INFO_CLOSE, INFO_OPEN, GenerationManager, trajectory_metrics
from rag_r1.llm_agent.prompts import empty_search_note, invalid_action_note, user_content
from rag_r1.llm_agent.scripted import ScriptedPolicy
from verl.trainer.config import rollout_config, schema_node

LONG_TEXT = "The quick brown fox jumps over the lazy dog. " * 20


class FakeRetriever:
    def __init__(self, error: Exception | None = None):
        self.calls: list[tuple[list[str], int]] = []
        self.error = error

    def retrieve(self, queries, topk):
        self.calls.append((list(queries), topk))
        if self.error:
            raise self.error
        return [[{"id": f"{q}#{k}", "contents": f'"{q}"\n{LONG_TEXT}', "score": 1.0} for k in range(topk)]
                for q in queries]


def config(**overrides) -> AgentConfig:
    values = dict(max_prompt_length=4096, max_start_length=2048, max_response_length=512, topk=2)
    values.update(overrides)
    return AgentConfig(**values)


def encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def test_observation_is_cut_to_max_obs_length_keeping_both_tags(tokenizer):
    policy = ScriptedPolicy(tokenizer, {"Q1": ["<search> fox </search>", "<answer> dog </answer>"]})
    manager = GenerationManager(policy, tokenizer, FakeRetriever(), config(max_obs_length=60))
    [row], stats = manager.run([encode(tokenizer, "Q1 ")])
    info = [t for t, m in zip(row.response, row.info_mask) if m]
    assert len(info) == 60
    text = tokenizer.decode(info)
    assert text.startswith(INFO_OPEN + '{"query": ["fox"], "documents": ["Doc 1(Title: fox) The quick')
    assert text.endswith(INFO_CLOSE)
    assert row.obs_truncated == 1 and row.answered and stats.retrieval_requests == 1


def test_rolling_context_keeps_prompt_end_and_latest_response(tokenizer):
    from verl.workers.rollout.base import assemble_output

    texts = ["<search> fox </search>", "<search> dog </search>", "<answer> fox </answer>"]
    contexts = []

    def generate(batch):  # replays `texts` by call number and records the token contexts it saw
        ids, mask = batch.batch["input_ids"], batch.batch["attention_mask"].bool()
        contexts.append(ids[0][mask[0]].tolist())
        tokens = torch.tensor([encode(tokenizer, texts[len(contexts) - 1])])
        output = assemble_output(batch, tokens, torch.ones_like(tokens))
        output.batch["rollout_log_probs"] = torch.zeros(tokens.shape)
        return output

    prompt = encode(tokenizer, "instruction that is long and gets cut, then the question")
    cfg = config(max_start_length=4, max_prompt_length=100, max_obs_length=60)
    [row], _ = GenerationManager(generate, tokenizer, FakeRetriever(), cfg).run([prompt])
    assert len(row.response) > 100  # so the third context had to drop old response tokens
    assert contexts[0] == prompt[-4:]
    assert contexts[1] == prompt[-4:] + row.response[: len(contexts[1]) - 4]
    # the last 4 prompt tokens, then the newest 96 tokens of the response so far
    response_before_turn_3 = row.response[: -len(encode(tokenizer, texts[2]))]
    assert contexts[2] == prompt[-4:] + response_before_turn_3[-96:]
    assert row.answered and row.turns == 3 and row.search_calls == 2


def test_turn_cut_by_max_response_length_is_invalid_and_final_turn_ends(tokenizer):
    # 8 tokens cannot hold the closing tag: every turn is invalid; after max_turns=1 one final turn
    policy = ScriptedPolicy(tokenizer, {"Q": ["<search> a long query about foxes </search>"] * 2})
    manager = GenerationManager(policy, tokenizer, FakeRetriever(), config(max_turns=1, max_response_length=8))
    [row], stats = manager.run([encode(tokenizer, "Q ")])
    note = encode(tokenizer, invalid_action_note("multi"))
    assert row.turns == 2 and row.valid_actions == 0 and not row.answered and row.done
    assert len(row.response) == 8 + len(note) + 8  # the final turn gets no note
    assert row.info_mask == [0] * 8 + [1] * len(note) + [0] * 8
    assert stats.retrieval_requests == 0 and stats.requests_per_turn == [0, 0]
    metrics = trajectory_metrics([row], stats)
    assert metrics["env/duplicate_query_ratio"] == 0.0 and metrics["env/valid_action_ratio"] == 0.0


def test_empty_search_is_invalid_and_gets_a_note_saying_so(tokenizer):
    policy = ScriptedPolicy(tokenizer, {"Q": ["<search> , , </search>", "<answer> x </answer>"]})
    retriever = FakeRetriever()
    [row], _ = GenerationManager(policy, tokenizer, retriever, config()).run([encode(tokenizer, "Q ")])
    assert retriever.calls == [] and row.valid_actions == 1 and row.search_calls == 0  # the answer only
    note = empty_search_note("multi")
    assert note.startswith("\nThat search had no query.") and note != invalid_action_note("multi")
    assert tokenizer.decode(row.response) == "<search> , , </search>" + note + "<answer> x </answer>"


def test_retrieval_failure_is_raised_not_swallowed(tokenizer):
    policy = ScriptedPolicy(tokenizer, {"Q": ["<search> fox </search>"]})
    manager = GenerationManager(policy, tokenizer, FakeRetriever(RuntimeError("server down")), config())
    with pytest.raises(RuntimeError, match="server down"):
        manager.run([encode(tokenizer, "Q ")])


def test_real_engine_rollout_shapes(tiny_model_dir):
    """The manager on the tiny random Llama through HFRollout: the contract's keys and masks hold."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rag_r1.llm_agent.loop import SearchAgentLoop
    from verl.workers.rollout.base import build_prompt_batch
    from verl.workers.rollout.hf_rollout import HFRollout

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rollout = HFRollout(model, tokenizer, rollout_config(response_length=6))
    cfg = schema_node("", {
        "data": {"max_prompt_length": 256, "max_start_length": 128, "max_response_length": 6},
        "agent": {"max_turns": 1},
        "actor_rollout_ref": {"rollout": {"do_sample": False, "val_kwargs": {"do_sample": False}}},
    })
    loop = SearchAgentLoop(cfg, tokenizer, rollout.generate_sequences, retriever=FakeRetriever())
    questions = ("Who was born first?", "Which city?")
    prompts = build_prompt_batch([encode(tokenizer, user_content(q, "multi")) for q in questions], tokenizer.pad_token_id)
    out = loop.run(prompts)
    response_mask, info_mask = out.batch["response_mask"], out.batch["info_mask"]
    assert out.batch["input_ids"].shape == (2, prompts.batch["input_ids"].shape[1] + response_mask.shape[1])
    assert torch.all(info_mask <= response_mask)
    # greedy 6-token turns of a random model hold no action: turn 1 is invalid and gets the note
    # (info_mask 1), the final turn 2 gets nothing
    note = encode(tokenizer, invalid_action_note("multi"))
    assert list(out.non_tensor_batch["turns"]) == [2, 2] and list(out.non_tensor_batch["search_calls"]) == [0, 0]
    for i in range(2):
        assert response_mask[i].tolist() == [1] * (6 + len(note) + 6) + [0] * (response_mask.shape[1] - 12 - len(note))
        assert info_mask[i].tolist()[: 12 + len(note)] == [0] * 6 + [1] * len(note) + [0] * 6
        assert out.batch["responses"][i, 6 : 6 + len(note)].tolist() == note


class RankedRetriever:
    """Each query's passages in a fixed rank order (a passage's title is its id)."""

    RANKS = {"fox": ["a", "b", "c", "e", "f", "g", "h"], "dog": ["b", "c", "d", "a", "e", "h", "i"]}

    def __init__(self):
        self.depths: list[int] = []

    def retrieve(self, queries, topk):
        self.depths.append(topk)
        return [[{"id": pid, "contents": f'"{pid}"\nabout {pid}', "score": 1.0} for pid in self.RANKS[q][:topk]]
                for q in queries]


@pytest.mark.parametrize("unseen", [False, True])
def test_unseen_passages_never_shows_a_trajectory_a_passage_twice(tokenizer, unseen):
    policy = ScriptedPolicy(tokenizer, {"Q1": ["<search> fox, dog </search>", "<search> fox </search>",
                                               "<answer> e </answer>"]})
    retriever = RankedRetriever()
    manager = GenerationManager(policy, tokenizer, retriever, config(unseen_passages=unseen))
    [row], _ = manager.run([encode(tokenizer, "Q1 ")])
    second = tokenizer.decode([t for t, m in zip(row.response, row.info_mask) if m]).split(INFO_CLOSE)[1]
    if unseen:
        # dog skips a and b, which fox showed in the same search; the repeated fox search goes deeper
        assert row.retrieved_ids == [["a", "b", "c", "d"], ["e", "f"]]
        assert retriever.depths == [4, 6]  # seen + topk x queries: 0 + 2 x 2, then 4 + 2 x 1
        assert "Doc 1(Title: e) about e" in second and "Title: a" not in second
    else:  # the paper's retrieval: a repeated query repeats its passages
        assert row.retrieved_ids == [["a", "b", "b", "c"], ["a", "b"]]
        assert retriever.depths == [2, 2]
        assert "Doc 1(Title: a) about a" in second
