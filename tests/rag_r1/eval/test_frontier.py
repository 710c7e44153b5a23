"""The frontier stage: sampled n times, questions answered right sometimes (not always, not never) are
kept for RL; counts, samples and a resumable run."""
from __future__ import annotations

import json

import pytest

import rag_r1.search.client
from rag_r1.eval import frontier
from rag_r1.eval.runner import TrajectoryWriter

from test_eval_cli import FakeClient


def questions(n: int) -> list[dict]:
    return [{"id": f"q{i}", "question": f"Who is {i}?", "golden_answers": [f"a{i}"]} for i in range(n)]


class CountingSolver:
    """Answers question i right on the first `i % 3` of its n samples: never, once, twice."""

    def __init__(self):
        self.calls = []

    def __call__(self, batch):
        self.calls.append([q["id"] for q in batch])
        seen: dict[str, int] = {}
        out = []
        for q in batch:
            k = seen.get(q["id"], 0)
            seen[q["id"]] = k + 1
            right = k < int(q["id"][1:]) % 3
            out.append({"answer": q["golden_answers"][0] if right else "wrong"})
        return out


def test_samples_are_scored_per_question_and_a_rerun_skips_finished_ones(tmp_path):
    solve = CountingSolver()
    writer = TrajectoryWriter(tmp_path / "samples.jsonl")
    frontier.sample_hits(questions(4)[:2], solve, n=2, writer=writer, batch_size=4)
    writer.close()
    assert solve.calls == [["q0", "q0", "q1", "q1"]]  # two questions x two samples per batch of 4
    writer = TrajectoryWriter(tmp_path / "samples.jsonl")
    frontier.sample_hits(questions(4), solve, n=2, writer=writer, batch_size=4)
    assert solve.calls[1] == ["q2", "q2", "q3", "q3"]
    assert {qid: row["em"] for qid, row in writer.rows.items()} == {
        "q0": [0.0, 0.0], "q1": [1.0, 0.0], "q2": [1.0, 1.0], "q3": [0.0, 0.0]}
    writer.close()


def test_cli_keeps_the_frontier_questions_in_their_own_format(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(rag_r1.search.client, "RetrievalClient", FakeClient)
    monkeypatch.setattr("rag_r1.eval.agent.AgentSolver.__call__", lambda self, batch: CountingSolver()(batch))
    source = tmp_path / "train.jsonl"
    source.write_text("".join(json.dumps({**q, "supporting_ids": ["p1", "p2"]}) + "\n" for q in questions(6)))
    out = tmp_path / "frontier"
    counts = frontier.main(["--model", str(tiny_model_dir), "--questions", str(source), "--retrieval-url", "http://x",
                            "--mode", "multi", "--out", str(out), "--n", "3", "--max-new-tokens", "4"])
    # i % 3: 0 never, 1 sometimes (1 of 3), 2 sometimes (2 of 3)
    assert counts == {"questions": 6, "always": 0, "sometimes": 4, "never": 2, "n": 3, "kept": 4}
    assert json.loads((out / "counts.json").read_text()) == counts
    kept = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [q["id"] for q in kept] == ["q1", "q2", "q4", "q5"]
    assert kept[0] == {**questions(6)[1], "supporting_ids": ["p1", "p2"]}  # the input row, unchanged
    # with guide trajectories, the never-solved questions are worth training on too
    assert frontier.is_frontier([0.0, 0.0], keep_never=True) and not frontier.is_frontier([0.0, 0.0])
    assert not frontier.is_frontier([1.0, 1.0], keep_never=True)


def test_n_below_two_is_refused(capsys):
    with pytest.raises(SystemExit):
        frontier.parse_args(["--model", "m", "--questions", "q.jsonl", "--retrieval-url", "u", "--mode", "multi",
                             "--out", "o", "--n", "1"])
    assert "--n must be >= 2" in capsys.readouterr().err
