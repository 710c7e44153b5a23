from __future__ import annotations

import json

import pandas as pd
import pytest

from rag_r1.eval.runner import SET_ASIDE, TrajectoryWriter, evaluate, load_questions

QUESTIONS = [
    {"id": f"q{i}", "question": f"question {i}?", "golden_answers": [f"answer {i}"], "supporting_ids": [f"p{i}", "px"]}
    for i in range(5)
]


class FakeAgent:
    """Answers question i right when i is even; one search round retrieving p{i} and py.
    Raises on the batch holding `crash_on`, as a run killed halfway would stop."""

    def __init__(self, crash_on: str | None = None):
        self.crash_on = crash_on
        self.seen: list[str] = []

    def __call__(self, batch: list[dict]) -> list[dict]:
        if any(q["id"] == self.crash_on for q in batch):
            raise KeyboardInterrupt
        self.seen += [q["id"] for q in batch]
        out = []
        for q in batch:
            i = int(q["id"][1:])
            answer = f"answer {i}" if i % 2 == 0 else "wrong"
            out.append({"text": f"<search> {q['question']} </search> ... <answer> {answer} </answer>",
                        "answer": answer, "turns": 2, "searches": 1, "queries": [[q["question"]]],
                        "retrieved": [[f"p{i}", "py"]], "tokens": 10 + i})
        return out


def test_a_second_run_skips_the_questions_already_written(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        evaluate(QUESTIONS, FakeAgent(crash_on="q4"), tmp_path, batch_size=2)
    lines = (tmp_path / "trajectories.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["q0", "q1", "q2", "q3"]
    assert not (tmp_path / "summary.json").exists()

    agent = FakeAgent()
    summary = evaluate(QUESTIONS, agent, tmp_path, batch_size=2)
    assert agent.seen == ["q4"]
    rows = [json.loads(line) for line in (tmp_path / "trajectories.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q0", "q1", "q2", "q3", "q4"]
    assert set(rows[0]) == {"id", "question", "golden_answers", "supporting_ids", "text", "answer", "em", "f1",
                            "turns", "searches", "queries", "retrieved", "tokens", "seconds"}
    assert [r["em"] for r in rows] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["n"] == 5 and summary["em"] == pytest.approx(0.6)
    assert summary["tokens"] == pytest.approx(12.0)  # 10..14
    assert summary["evidence_recall"] == pytest.approx(0.5) and summary["evidence_all"] == 0.0

    # Nothing left to do: the summary is rebuilt from disk without calling the agent.
    again = FakeAgent(crash_on="q0")
    assert evaluate(QUESTIONS[:3], again, tmp_path)["n"] == 3
    assert again.seen == []


def test_a_smaller_sample_sets_the_other_rows_aside_and_a_larger_one_takes_them_back(tmp_path):
    def ids(name):
        return [json.loads(line)["id"] for line in (tmp_path / name).read_text().splitlines()]

    evaluate(QUESTIONS[:4], FakeAgent(), tmp_path, batch_size=2)
    agent = FakeAgent()
    summary = evaluate([QUESTIONS[2], QUESTIONS[0]], agent, tmp_path)
    assert agent.seen == [] and summary["n"] == 2 and summary["em"] == 1.0
    # trajectories.jsonl holds exactly the summarized questions, so readers of it agree with summary.json
    assert ids("trajectories.jsonl") == ["q2", "q0"]
    assert ids(SET_ASIDE) == ["q1", "q3"]

    agent = FakeAgent()
    summary = evaluate(QUESTIONS, agent, tmp_path, batch_size=2)
    assert agent.seen == ["q4"]  # q1 and q3 come back from the set-aside file, not from the agent
    assert ids("trajectories.jsonl") == ["q0", "q1", "q2", "q3", "q4"]
    assert not (tmp_path / SET_ASIDE).exists()
    assert summary["n"] == 5 and summary["em"] == pytest.approx(0.6)

    # a set-aside row under an id that now names another question is refused like any other
    evaluate(QUESTIONS[:1], FakeAgent(), tmp_path)
    with pytest.raises(ValueError, match="holds other questions under 1 of these ids"):
        evaluate([{**QUESTIONS[3], "question": "another?"}], FakeAgent(), tmp_path)


def test_writer_cuts_a_partial_last_line_and_refuses_a_damaged_file(tmp_path):
    path = tmp_path / "trajectories.jsonl"
    path.write_text('{"id": "q0"}\n{"id": "q1", "ans')
    writer = TrajectoryWriter(path)
    assert set(writer.rows) == {"q0"}
    writer.write([{"id": "q1"}])
    writer.close()
    assert path.read_text() == '{"id": "q0"}\n{"id": "q1"}\n'

    path.write_text('{"id": "q0"}\nnot json\n{"id": "q1"}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        TrajectoryWriter(path)


def test_solver_must_answer_every_question(tmp_path):
    with pytest.raises(RuntimeError, match="1 results for 2 questions"):
        evaluate(QUESTIONS[:2], lambda batch: FakeAgent()(batch[:1]), tmp_path, batch_size=2)


def test_questions_from_flashrag_jsonl_and_verl_parquet(tmp_path):
    jsonl = tmp_path / "nq.jsonl"
    jsonl.write_text('{"id": "a", "question": "who?", "golden_answers": ["X", "Y"]}\n'
                     '{"id": "b", "question": "where?", "golden_answers": ["Z"], "supporting_ids": ["p1"]}\n')
    assert load_questions(jsonl) == [
        {"id": "a", "question": "who?", "golden_answers": ["X", "Y"]},
        {"id": "b", "question": "where?", "golden_answers": ["Z"], "supporting_ids": ["p1"]},
    ]
    assert len(load_questions(jsonl, limit=1)) == 1

    # veRL rows as scripts/data_process writes them; the second row lacks id and supporting_ids,
    # which parquet's struct column stores as None
    parquet = tmp_path / "test.parquet"
    pd.DataFrame([{
        "data_source": "hotpotqa", "prompt": [{"role": "user", "content": "Answer ... Question: who?"}],
        "ability": "fact-reasoning", "reward_model": {"style": "rule", "ground_truth": {"target": ["X"]}},
        "extra_info": extra,
    } for extra in ({"split": "test", "index": 0, "question": "who?", "id": "h1", "supporting_ids": ["p1", "p2"]},
                    {"split": "test", "index": 1, "question": "when?"})]).to_parquet(parquet)
    assert load_questions(parquet) == [
        {"id": "h1", "question": "who?", "golden_answers": ["X"], "supporting_ids": ["p1", "p2"]},
        {"id": "1", "question": "when?", "golden_answers": ["X"]}]


def test_question_files_with_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_questions(tmp_path / "missing.jsonl")
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "question": "q", "golden_answers": ["x"]}\n' * 2)
    with pytest.raises(ValueError, match="'a' occurs twice"):
        load_questions(dup)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "golden_answers": ["x"]}\n')
    with pytest.raises(ValueError, match="bad.jsonl row 0: no 'question'"):
        load_questions(bad)
