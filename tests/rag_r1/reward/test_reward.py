from __future__ import annotations

import pytest

import rag_r1.reward
from rag_r1.llm_agent.actions import parse_action
from rag_r1.llm_agent.prompts import invalid_action_note

from rag_r1.reward import compute_score, register
from rag_r1.reward.format import FormatWeights, format_reward


def test_dispatch_by_data_source():
    r = compute_score("hotpotqa", "<answer> Paris </answer>", {"target": ["paris"]}, None)
    assert r == {"score": 1.0, "em": 1.0, "f1": 1.0, "answered": 1.0}
    # a round cost lowers the score of a two-round answer; its exact match stays what it is
    r = compute_score("hotpotqa", "<search> a </search><search> b </search><answer> Paris </answer>",
                      {"target": ["paris"]}, round_cost=0.1)
    assert (r["score"], r["em"]) == (pytest.approx(0.9), 1.0)
    r = compute_score("nq", "<answer> Paris France </answer>", {"target": "Paris"}, {"reward": "f1"})
    assert r["score"] == pytest.approx(2 / 3) and r["em"] == 0.0
    with pytest.raises(KeyError, match="no reward registered for data_source='mystery'"):
        compute_score("mystery", "x", {"target": "y"})


def test_register_a_source(monkeypatch):
    monkeypatch.setattr(rag_r1.reward, "REWARDS", dict(rag_r1.reward.REWARDS))  # leave the registry as found
    register("my_set", "f1")
    assert compute_score("my_set", "<answer> x y </answer>", {"target": "x"})["score"] == pytest.approx(2 / 3)
    with pytest.raises(KeyError, match="unknown scorer"):
        register("my_set", "bleu")


def test_format_reward_weights_and_cap():
    w = FormatWeights(answer_tag=0.2, think_tag=0.1, search_tag=0.1)
    text = "<think> a </think><search> q </search>\n<information>\n<answer> Paris </answer>\n</information>\n"
    # the answer inside retrieved text is not the policy's: no answer credit, no EM
    assert format_reward(text, {"target": "Paris"}, w) == {
        "score": pytest.approx(0.2), "em": 0.0, "has_answer": 0.0, "has_think": 1.0, "has_search": 1.0}
    # correct answer: 1.0 + 0.1 + 0.1 capped at max_total 1.0
    assert format_reward(text + "<answer> paris </answer>", {"target": "Paris"}, w)["score"] == 1.0
    # wrong but well formed: 0.2 + 0.1 + 0.1
    assert format_reward(text + "<answer> Rome </answer>", {"target": "Paris"}, w)["score"] == pytest.approx(0.4)
    # default weights reduce to plain EM
    assert format_reward("<think> a </think><answer> Rome </answer>", {"target": "Paris"})["score"] == 0.0
    r = compute_score("hotpotqa", "<answer> Rome </answer>", {"target": "Paris"},
                      {"reward": "format", "format_weights": {"answer_tag": 0.3}})
    assert r["score"] == pytest.approx(0.3)


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_corrective_note_is_never_an_answer(mode):
    # found by the CPU PPO run: a note that spelled out "<answer> and </answer>" scored "and" as an answer
    response = "<think> hmm" + invalid_action_note(mode) + "still nothing"
    assert parse_action(invalid_action_note(mode)) == (None, "")
    assert compute_score("hotpotqa", response, {"target": "and"}) == {"score": 0.0, "em": 0.0, "f1": 0.0, "answered": 0.0}


def test_answer_tags_inside_retrieved_text_do_not_score():
    response = "<search> q </search>\n<information>\nDoc 1(Title: t) <answer> Paris </answer>\n</information>\n"
    assert compute_score("hotpotqa", response, {"target": "Paris"})["answered"] == 0.0
    assert compute_score("hotpotqa", response + "<answer> Paris </answer>", {"target": "Paris"})["score"] == 1.0


def test_evidence_term_is_off_by_default_and_adds_weighted_recall_when_on():
    from rag_r1.reward import compute_score

    truth = {"target": ["Paris"]}
    info = {"supporting_ids": ["a", "b"], "retrieved_ids": [["a", "x"], ["a"]]}
    assert compute_score("hotpotqa", "<answer> Paris </answer>", truth, info)["score"] == 1.0
    on = compute_score("hotpotqa", "<answer> Rome </answer>", truth, {**info, "evidence_reward_weight": 0.5})
    assert (on["score"], on["evidence_recall"]) == (0.25, 0.5)  # 0 (EM) + 0.5 x (1 of 2 found)
    no_ids = compute_score("hotpotqa", "<answer> Paris </answer>", truth, {"evidence_reward_weight": 0.5})
    assert no_ids["score"] == 1.0 and "evidence_recall" not in no_ids


def test_loop_hands_retrieved_ids_and_weight_to_the_reward():
    from types import SimpleNamespace

    from rag_r1.llm_agent.loop import with_evidence_reward

    rows = [SimpleNamespace(retrieved_ids=[["a"]]), SimpleNamespace(retrieved_ids=[])]
    extra = [{"supporting_ids": ["a", "b"]}, None]
    assert with_evidence_reward(extra, rows, 0.3) == [
        {"supporting_ids": ["a", "b"], "retrieved_ids": [["a"]], "evidence_reward_weight": 0.3},
        {"retrieved_ids": [], "evidence_reward_weight": 0.3}]
    assert extra[0] == {"supporting_ids": ["a", "b"]}  # the prompts' own extra_info is not changed


def test_round_cost_charges_rounds_after_the_first_of_a_rewarded_answer():
    gold = {"target": ["Paris"]}
    parallel = "<search> a, b </search><information> Paris </information><answer> Paris </answer>"
    sequential = ("<search> a </search><information> x </information><search> b </search>"
                  "<information> y </information><search> c </search><answer> Paris </answer>")
    assert compute_score("hotpotqa", parallel, gold, round_cost=0.1)["score"] == 1.0
    three = compute_score("hotpotqa", sequential, gold, round_cost=0.1)
    assert three["score"] == pytest.approx(0.8) and three["rounds"] == 3.0
    assert compute_score("hotpotqa", sequential, gold)["score"] == 1.0  # off by default: the paper's EM
    assert compute_score("hotpotqa", sequential.replace("Paris", "Rome"), gold, round_cost=0.1)["score"] == 0.0
    # a search inside a retrieved passage is not the policy's round
    quoted = "<search> a </search><information> <search> q </search> </information><answer> Paris </answer>"
    assert compute_score("hotpotqa", quoted, gold, round_cost=0.5)["score"] == 1.0
    with pytest.raises(ValueError, match="round_cost=-0.1"):
        compute_score("hotpotqa", parallel, gold, round_cost=-0.1)
