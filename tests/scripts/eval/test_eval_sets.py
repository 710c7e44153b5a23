from __future__ import annotations

import json

import pytest

import scripts.eval.eval_sets as eval_sets


def test_every_mode_and_set_gets_its_dir_and_one_table(tmp_path, monkeypatch):
    data = tmp_path / "qa"
    data.mkdir()
    for name in ("nq", "bamboogle"):
        (data / f"{name}.jsonl").write_text('{"id": "1", "question": "q?", "golden_answers": ["a"]}\n')
    calls = []

    def fake_run(args):
        # stands in for the model: EM 1 in multi mode, 0 in single
        calls.append((args.mode, args.questions.name, args.limit, args.batch_size))
        summary = {"n": 1, "em": float(args.mode == "multi"), "f1": 0.5, "rounds": 1.0, "queries_per_round": 2.0,
                   "tokens": 10.0, "seconds_per_question": 1.0}
        args.out.mkdir(parents=True)
        (args.out / "summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(eval_sets, "run", fake_run)
    out = tmp_path / "out"
    eval_sets.main(["--model", "m", "--retrieval-url", "http://x/retrieve", "--data-dir", str(data),
                    "--sets", "bamboogle", "nq", "--out", str(out), "--limit", "5", "--batch-size", "4"])
    assert calls == [("single", "bamboogle.jsonl", 5, 4), ("single", "nq.jsonl", 5, 4),
                     ("multi", "bamboogle.jsonl", 5, 4), ("multi", "nq.jsonl", 5, 4)]
    report = (out / "report.md").read_text()
    assert "| Method | NQ | Bamboogle | Avg. |" in report
    assert "| multi | 1.000 | 1.000 | 1.000 |" in report and "| single | 0.000 | 0.000 | 0.000 |" in report
    assert (out / "report.png").is_file()


def test_a_missing_set_stops_before_any_run(tmp_path):
    with pytest.raises(SystemExit, match="no musique.jsonl or musique.parquet"):
        eval_sets.main(["--model", "m", "--retrieval-url", "u", "--data-dir", str(tmp_path), "--sets", "musique",
                        "--out", str(tmp_path / "o")])
