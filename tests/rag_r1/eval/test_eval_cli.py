"""`python -m rag_r1.eval` end to end on the tiny random model (retrieval replaced in process)."""
from __future__ import annotations

import json

import pytest

import rag_r1.search.client
from rag_r1.eval.__main__ import parse_args, run


class FakeClient:
    def __init__(self, urls, **kwargs):
        self.urls = urls

    def retrieve(self, queries, topk):
        return [[{"id": f"p{k}", "contents": f'"T{k}"\nText {k}.', "score": 1.0} for k in range(topk)]
                for _ in queries]


def test_cli_writes_the_contract_files_and_refuses_other_settings_on_resume(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(rag_r1.search.client, "RetrievalClient", FakeClient)
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Who is {i}?", "golden_answers": ["x"],
                                             "supporting_ids": ["p0", "p9"]}) + "\n" for i in range(3)))
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model_dir), "--questions", str(questions), "--retrieval-url", "http://x/retrieve",
            "--mode", "multi", "--out", str(out), "--limit", "2", "--max-new-tokens", "6", "--max-turns", "1",
            "--batch-size", "2"]
    summary = run(parse_args(argv))
    assert summary["n"] == 2
    assert {"n", "em", "f1", "rounds", "queries_per_round", "tokens", "seconds_per_question"} <= set(summary)
    assert json.loads((out / "summary.json").read_text()) == summary
    rows = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q0", "q1"]
    # a random model writes no action: at most 6 tokens in each of its 2 turns, no search
    assert all(r["searches"] == 0 and 1 <= r["tokens"] <= 12 and r["turns"] == 2 for r in rows)
    config = json.loads((out / "config.json").read_text())
    assert config["mode"] == "multi" and config["max_turns"] == 1 and config["sample"] is False

    with pytest.raises(SystemExit, match="other settings.*'mode': \\('multi', 'single'\\)"):
        run(parse_args([*argv[:argv.index("--mode")], "--mode", "single", *argv[argv.index("--mode") + 2:]]))
    with pytest.raises(SystemExit, match="other settings.*'unseen_passages': \\(False, True\\)"):
        run(parse_args([*argv, "--unseen-passages"]))
    # a config.json written before unseen_passages existed was run without it: it resumes
    config.pop("unseen_passages")
    (out / "config.json").write_text(json.dumps(config))
    assert run(parse_args(argv))["n"] == 2


def test_cli_resumes_a_larger_sample_question_by_question_and_refuses_colliding_ids(tiny_model_dir, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setattr(rag_r1.search.client, "RetrievalClient", FakeClient)

    def write(name, texts):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"id": f"q{i}", "question": t, "golden_answers": ["x"]}) + "\n"
                                for i, t in enumerate(texts)))
        return path

    out = tmp_path / "out"
    argv = ["--model", str(tiny_model_dir), "--retrieval-url", "http://x/retrieve", "--mode", "multi",
            "--out", str(out), "--max-new-tokens", "6", "--max-turns", "1", "--batch-size", "2"]
    assert run(parse_args([*argv, "--questions", str(write("two.jsonl", ["Who is 0?", "Who is 1?"]))]))["n"] == 2
    first = (out / "trajectories.jsonl").read_text().splitlines()
    # another file holding the same two questions and a third: only the third is solved
    bigger = write("three.jsonl", ["Who is 0?", "Who is 1?", "Who is 2?"])
    assert run(parse_args([*argv, "--questions", str(bigger)]))["n"] == 3
    rows = (out / "trajectories.jsonl").read_text().splitlines()
    assert rows[:2] == first and len(rows) == 3
    with pytest.raises(ValueError, match="holds other questions under 1 of these ids \\(first: 'q1'\\)"):
        run(parse_args([*argv, "--questions", str(write("other.jsonl", ["Who is 0?", "Where is 1?"]))]))


def test_cli_rejects_sampling_options_without_sample(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--questions", "q", "--retrieval-url", "u", "--mode", "multi", "--out", "o",
                    "--temperature", "0.7"])
    assert "only apply with --sample" in capsys.readouterr().err
