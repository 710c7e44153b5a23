"""The evaluation solver around the real GenerationManager, with a scripted policy as the engine
and an in-process retriever."""
from __future__ import annotations

import pytest

from rag_r1.eval.agent import AgentSolver
from rag_r1.eval.runner import evaluate
from rag_r1.llm_agent.config import AgentConfig
from rag_r1.llm_agent.generation import GenerationManager
from rag_r1.llm_agent.prompts import invalid_action_note
from rag_r1.llm_agent.scripted import ScriptedPolicy

PASSAGES = {"Tarnholm": "Tarnholm is a city in Veland.", "Ilsa Varn": "Ilsa Varn was born in Tarnholm."}


class FakeRetriever:
    def __init__(self):
        self.requests: list[list[str]] = []

    def retrieve(self, queries, topk):
        self.requests.append(list(queries))
        return [[{"id": f"id:{title}", "contents": f'"{title}"\n{text}', "score": 1.0}
                 for title, text in PASSAGES.items() if title in q][:topk] for q in queries]


@pytest.fixture(scope="module")
def tokenizer():
    from tiny_model import make_tokenizer

    return make_tokenizer()


SCRIPTS = {
    # two rounds: the bridge, then the answer's passage
    "Ilsa Varn born": ["<think> find her city </think><search> Ilsa Varn </search>",
                       "<search> Tarnholm </search>", "<think> done </think><answer> Veland </answer>"],
    # one multi-query round, then a wrong answer
    "Which river": ["<search> Ilsa Varn, Tarnholm </search>", "<answer> Tarn </answer>"],
    # never a complete action: gets the corrective note (which quotes "<answer> and </answer>")
    "Who founded": ["I do not know.", "Still nothing."],
}


def solver(tokenizer, mode, max_turns=3):
    config = AgentConfig(max_prompt_length=4096, max_start_length=2048, max_response_length=64, mode=mode,
                         max_turns=max_turns, topk=2)
    retriever = FakeRetriever()
    manager = GenerationManager(ScriptedPolicy(tokenizer, SCRIPTS), tokenizer, retriever, config)
    return AgentSolver(manager, tokenizer, {"do_sample": False}), retriever


def test_solver_reports_rounds_queries_ids_and_policy_tokens(tokenizer):
    solve, retriever = solver(tokenizer, "multi", max_turns=1)
    batch = [{"id": "a", "question": "In which country was Ilsa Varn born"},
             {"id": "b", "question": "Which river flows through her city?"},
             {"id": "c", "question": "Who founded her school?"}]
    a, b, c = solve(batch)

    # max_turns=1: a searches once, then its last turn's search is not run and it never answers
    assert (a["turns"], a["searches"], a["queries"], a["retrieved"]) == (2, 1, [["Ilsa Varn"]], [["id:Ilsa Varn"]])
    assert a["answer"] is None
    assert (b["turns"], b["searches"], b["answer"]) == (2, 1, "Tarn")
    assert b["queries"] == [["Ilsa Varn", "Tarnholm"]]
    assert b["retrieved"] == [["id:Ilsa Varn", "id:Tarnholm"]]
    assert "<information>" in b["text"] and "Tarnholm is a city in Veland." in b["text"]
    expected = "<search> Ilsa Varn, Tarnholm </search><answer> Tarn </answer>"
    assert b["tokens"] == len(tokenizer.encode(expected, add_special_tokens=False))
    # c never acted: the corrective note sits in its text, and nothing in it reads as an answer
    assert invalid_action_note("multi") in c["text"]
    assert (c["answer"], c["searches"], c["queries"], c["retrieved"]) == (None, 0, [], [])
    assert retriever.requests == [["Ilsa Varn", "Tarnholm"]]  # one request for the whole turn


def test_two_rounds_through_the_runner_give_recall_by_round(tokenizer, tmp_path):
    solve, _ = solver(tokenizer, "single")
    questions = [{"id": "a", "question": "In which country was Ilsa Varn born?", "golden_answers": ["Veland"],
                  "supporting_ids": ["id:Ilsa Varn", "id:Tarnholm"]}]
    summary = evaluate(questions, solve, tmp_path)
    assert summary["em"] == 1.0 and summary["rounds"] == 2.0 and summary["queries_per_round"] == 1.0
    assert summary["evidence_recall_by_round"] == [0.5, 1.0] and summary["evidence_all"] == 1.0
