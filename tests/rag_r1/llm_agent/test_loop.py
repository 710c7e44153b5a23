"""SearchAgentLoop end to end against a real BM25 server on loopback, with a scripted policy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rag_r1.llm_agent.loop import SearchAgentLoop
from rag_r1.llm_agent.prompts import invalid_action_note, user_content
from rag_r1.llm_agent.scripted import ScriptedPolicy
from rag_r1.reward import compute_score
from verl.trainer.config import schema_node
from verl.trainer.ppo.reward import RewardManager
from verl.workers.rollout.base import build_prompt_batch

Q_TOWER = "Which tower in Paris is made of wrought iron"
Q_PEN = "who discovered penicillin"
Q_MOUNT = "highest mountain in Africa"
Q_MOON = "first landed humans on the Moon"

DOC_TOWER = "Doc 1(Title: Eiffel Tower) The Eiffel Tower is a wrought-iron lattice tower in Paris, France."
DOC_PEN = "Doc 1(Title: Penicillin) Penicillin is an antibiotic discovered by Alexander Fleming in 1928."
DOC_MOUNT = "Doc 1(Title: Mount Kilimanjaro) Mount Kilimanjaro is a dormant volcano in Tanzania, the highest mountain in Africa."
DOC_MOON = "Doc 1(Title: Apollo 11) Apollo 11 first landed humans on the Moon in 1969."

A = ["<think> two facts </think>\n<search> " + Q_TOWER + ", " + Q_PEN + " </search>",
     "<think> found </think>\n<answer> Alexander Fleming </answer>"]
B = ["<think> hmm </think> I answer without tags",
     "<search> " + Q_MOUNT + ", , " + Q_MOUNT + ", " + Q_MOON + ", one query too many </search>",
     "<answer> Kilimanjaro </answer>"]
C = ["<search> " + Q_PEN + " </search>"] * 3
QUESTIONS = {"Who found penicillin": A, "Which is the tallest African peak": B, "Who keeps searching": C}


def make_config(url: str, mode: str = "multi", max_turns: int = 2):
    return schema_node("", {
        "data": {"max_prompt_length": 1024, "max_start_length": 512, "max_response_length": 256},
        "agent": {"mode": mode, "max_turns": max_turns, "topk": 1},
        "retriever": {"url": url},
        "actor_rollout_ref": {"rollout": {"do_sample": True, "temperature": 1.0, "top_p": 0.95,
                                          "val_kwargs": {"do_sample": False}}},
    })


def prompt_batch(tokenizer, questions, mode):
    token_lists = [tokenizer.apply_chat_template([{"role": "user", "content": user_content(q, mode)}],
                                                 add_generation_prompt=True, tokenize=True, return_dict=False)
                   for q in questions]
    batch = build_prompt_batch(token_lists, tokenizer.pad_token_id)
    batch.non_tensor_batch["data_source"] = np.array(["hotpotqa"] * len(questions), dtype=object)
    return batch, token_lists


def info_runs(tokenizer, response, info_mask):
    """Decoded text of every maximal run of info_mask == 1."""
    runs, current = [], []
    for token, flag in zip(response.tolist(), info_mask.tolist()):
        if flag:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current)); current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def block(payload: str) -> str:
    return "\n<information>\n" + payload + "\n</information>\n"


def test_multi_query_rollout_against_real_server(tokenizer, retrieval_server):
    policy = ScriptedPolicy(tokenizer, QUESTIONS)
    loop = SearchAgentLoop(make_config(retrieval_server.url), tokenizer, policy)
    prompts, token_lists = prompt_batch(tokenizer, list(QUESTIONS), "multi")
    before = retrieval_server.stats()

    out = loop.run(prompts)

    after = retrieval_server.stats()
    # turn 1: A's two queries + C's (a duplicate of A's) -> one request with 2 queries;
    # turn 2: B's three (two distinct) + C's -> one request with 3; turn 3 is final: no search.
    assert after["requests"] - before["requests"] == 2
    assert after["queries"] - before["queries"] == 5
    assert out.meta_info["metrics"]["env/retrieval_requests"] == 2

    block_a = block('{"query": ["%s", "%s"], "documents": ["%s", "%s"]}' % (Q_TOWER, Q_PEN, DOC_TOWER, DOC_PEN))
    block_b = block('{"query": ["%s", "%s", "%s"], "documents": ["%s", "%s", "%s"]}'
                    % (Q_MOUNT, Q_MOUNT, Q_MOON, DOC_MOUNT, DOC_MOUNT, DOC_MOON))
    block_c = block('{"query": ["%s"], "documents": ["%s"]}' % (Q_PEN, DOC_PEN))
    note = invalid_action_note("multi")
    expected = [A[0] + block_a + A[1], B[0] + note + B[1] + block_b + B[2], C[0] + block_c + C[1] + block_c + C[2]]
    expected_info = [[block_a], [note, block_b], [block_c, block_c]]

    lengths = out.batch["response_mask"].sum(-1)
    for i in range(3):
        n = int(lengths[i])
        response = out.batch["responses"][i, :n]
        assert tokenizer.decode(response) == expected[i]
        assert info_runs(tokenizer, response, out.batch["info_mask"][i, :n]) == expected_info[i]
        assert out.batch["info_mask"][i, n:].sum() == 0 and (out.batch["responses"][i, n:] == tokenizer.pad_token_id).all()
        # input_ids = the original left-padded prompt followed by the response
        assert out.batch["input_ids"][i, out.batch["attention_mask"][i].bool()].tolist() == token_lists[i] + response.tolist()
    assert torch.equal(out.batch["prompts"], prompts.batch["input_ids"])

    nt = out.non_tensor_batch
    assert list(nt["data_source"]) == ["hotpotqa"] * 3
    assert list(nt["turns"]) == [2, 3, 3]
    assert list(nt["search_calls"]) == [1, 1, 2]
    assert list(nt["num_queries"]) == [2, 3, 2]
    assert list(nt["valid_actions"]) == [2, 2, 3]
    assert list(nt["answered"]) == [True, True, False]
    assert nt["queries"][2] == [[Q_PEN], [Q_PEN]]
    assert nt["retrieved_ids"][0] == [["p0", "p1"]] and nt["retrieved_ids"][1] == [["p2", "p2", "p3"]]

    m = out.meta_info["metrics"]
    assert m["env/turns_mean"] == pytest.approx(8 / 3)
    assert m["env/search_calls_mean"] == pytest.approx(4 / 3)
    assert m["env/queries_per_call"] == pytest.approx(7 / 4)
    assert m["env/valid_action_ratio"] == pytest.approx(7 / 8)
    assert m["env/answered_ratio"] == pytest.approx(2 / 3)
    assert m["env/duplicate_query_ratio"] == pytest.approx(1 - 5 / 7)

    # the reward sees the response only: C never answered, and the prompt's example answer
    # ("Marie Curie", in the instruction) must not count for it
    golden = [["Alexander Fleming"], ["Mount Kilimanjaro", "Kilimanjaro"], ["Marie Curie"]]
    out.non_tensor_batch["reward_model"] = np.array([{"ground_truth": {"target": g}} for g in golden], dtype=object)
    scores, extras = RewardManager(tokenizer, compute_score)(out)
    assert scores.sum(-1).tolist() == [1.0, 1.0, 0.0] and extras["answered"] == [1.0, 1.0, 0.0]
    assert "<answer> Marie Curie </answer>" in tokenizer.decode(token_lists[2])

    # every turn asked the engine for the stop strings and the per-turn cap, with training sampling
    metas = [meta for _, meta in policy.calls]
    assert [len(contexts) for contexts, _ in policy.calls] == [3, 3, 2]
    assert all(m["stop"] == ["</search>", "</answer>"] and m["max_new_tokens"] == 256 for m in metas)
    assert metas[0]["do_sample"] is True and metas[0]["top_p"] == 0.95


def test_single_query_rollout_does_not_split_and_formats_lines(tokenizer, retrieval_server):
    script = {"Who found penicillin": ["<search> penicillin, discovered by </search>", "<answer> Fleming </answer>"]}
    loop = SearchAgentLoop(make_config(retrieval_server.url, mode="single"), tokenizer, ScriptedPolicy(tokenizer, script))
    prompts, _ = prompt_batch(tokenizer, list(script), "single")
    before = retrieval_server.stats()
    out = loop.run(prompts, validate=True)
    assert retrieval_server.stats()["queries"] - before["queries"] == 1
    n = int(out.batch["response_mask"][0].sum())
    assert tokenizer.decode(out.batch["responses"][0, :n]) == script["Who found penicillin"][0] + block(DOC_PEN) \
        + script["Who found penicillin"][1]
    assert out.non_tensor_batch["queries"][0] == [["penicillin, discovered by"]]


def test_loop_rejects_bad_agent_config_naming_the_key(tokenizer):
    config = make_config("http://127.0.0.1:9/retrieve")
    config.agent.mode = "parallel"
    with pytest.raises(ValueError, match="agent.mode='parallel'"):
        SearchAgentLoop(config, tokenizer, lambda batch: batch)
    config = make_config("http://127.0.0.1:9/retrieve")
    config.agent.max_turn = 3
    with pytest.raises(ValueError, match="agent.max_turn"):
        SearchAgentLoop(config, tokenizer, lambda batch: batch)
    config = make_config("")
    with pytest.raises(ValueError, match="retriever.url"):
        SearchAgentLoop(config, tokenizer, lambda batch: batch)


def test_evidence_step_metrics_by_round_with_parquet_style_ids():
    from types import SimpleNamespace

    import numpy as np

    from rag_r1.llm_agent.loop import evidence_step_metrics

    extra_info = np.array([{"supporting_ids": np.array(["a", "b"])},  # as read back from parquet
                           {"supporting_ids": ["c", "d"]},
                           {"id": "no-evidence-row"}], dtype=object)
    rows = [SimpleNamespace(retrieved_ids=[["a", "x"], ["a", "b"]]),  # 1/2 after round 1, 2/2 after round 2
            SimpleNamespace(retrieved_ids=[["d"]]),                   # 1/2, and stays there
            SimpleNamespace(retrieved_ids=[["a"]])]                   # not scored
    metrics = evidence_step_metrics(extra_info, rows)
    assert metrics == {"env/evidence_recall": 0.75, "env/evidence_all": 0.5, "env/retrieved_per_question": 2.0,
                       "env/evidence_recall_round_1": 0.5, "env/evidence_recall_round_2": 0.75}
    assert evidence_step_metrics(np.array([{"id": "x"}], dtype=object), rows[:1]) == {}
    assert evidence_step_metrics(None, rows) == {}


def answering_loop(tokenizer, **agent):
    """A loop whose policy answers at once (no retrieval), with these agent.* settings."""
    from test_generation import FakeRetriever

    config = make_config("http://127.0.0.1:1/retrieve")
    config.agent.update(agent)
    script = {q: ["<answer> x </answer>"] for q in QUESTIONS}
    return SearchAgentLoop(config, tokenizer, ScriptedPolicy(tokenizer, script), retriever=FakeRetriever())


def test_prompts_of_the_other_mode_stop_the_run_naming_both(tokenizer):
    prompts, _ = prompt_batch(tokenizer, list(QUESTIONS), "multi")
    with pytest.raises(ValueError, match=r"3 of the first 3 training prompts lack the instruction that "
                                         r"agent\.mode=single.*expects 'When you are missing a fact, look it up by "
                                         r"writing one query.*the data's prompt has 'When you are missing facts, look "
                                         r"them up by writing up to three short queries, separated by commas"):
        answering_loop(tokenizer, mode="single").run(prompts)


def test_prompts_with_other_query_settings_stop_the_run(tokenizer):
    prompts, _ = prompt_batch(tokenizer, list(QUESTIONS), "multi")
    with pytest.raises(ValueError, match=r"agent\.max_queries=2, agent\.query_delimiter=';'.*expects '.*up to two "
                                         r"short queries, separated by semicolons.*prompt has '.*up to three short "
                                         r"queries, separated by commas"):
        answering_loop(tokenizer, max_queries=2, query_delimiter=";").run(prompts)
    # the same settings on both sides pass
    token_lists = [tokenizer.apply_chat_template([{"role": "user", "content": user_content(q, "multi", 2, ";")}],
                                                 add_generation_prompt=True, tokenize=True, return_dict=False)
                   for q in QUESTIONS]
    out = answering_loop(tokenizer, max_queries=2, query_delimiter=";").run(
        build_prompt_batch(token_lists, tokenizer.pad_token_id))
    assert list(out.non_tensor_batch["answered"]) == [True] * 3


def test_a_prompt_without_our_instruction_stops_the_run(tokenizer):
    bare = build_prompt_batch([tokenizer.encode("Who found penicillin?", add_special_tokens=False)],
                              tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="1 of the first 1 validation prompts.*no instruction of rag_r1"):
        answering_loop(tokenizer).run(bare, validate=True)


def test_the_first_batch_of_training_and_of_validation_is_checked(tokenizer, monkeypatch):
    import rag_r1.llm_agent.loop as loop_module

    checked = []
    real = loop_module.check_instruction
    monkeypatch.setattr(loop_module, "check_instruction", lambda *a, **kw: checked.append(a[2]) or real(*a, **kw))
    loop = answering_loop(tokenizer)
    prompts, _ = prompt_batch(tokenizer, list(QUESTIONS), "multi")
    for validate in (False, False, True, True, False):
        loop.run(prompts, validate=validate)
    assert checked == ["training", "validation"]
