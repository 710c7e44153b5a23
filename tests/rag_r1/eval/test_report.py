from __future__ import annotations

import json

import pytest

from rag_r1.eval.report import EvalRun, load_runs, markdown_report, write_report


def summary(n, em, f1, rounds, qpr, tokens, seconds, **evidence):
    return {"n": n, "em": em, "f1": f1, "rounds": rounds, "queries_per_round": qpr, "tokens": tokens,
            "seconds_per_question": seconds, **evidence}


@pytest.fixture
def runs():
    return [
        EvalRun("single", "nq", summary(2, 0.5, 0.6, 2.0, 1.0, 100.0, 2.0)),
        EvalRun("single", "hotpotqa", summary(2, 0.0, 0.2, 3.0, 1.0, 150.0, 3.0, evidence_recall=0.5,
                                              evidence_all=0.0, evidence_recall_by_round=[0.25, 0.5],
                                              retrieved_per_question=9.0)),
        EvalRun("multi", "nq", summary(2, 1.0, 1.0, 1.0, 2.0, 80.0, 1.0)),
    ]


def test_markdown_tables_on_a_tiny_input(runs):
    # single pools nq and hotpotqa (2 questions each): rounds (2*2 + 3*2) / 4 = 2.5, queries per
    # round (1*2*2 + 1*3*2) / 10 = 1, tokens 125, seconds 2.5; evidence only from hotpotqa.
    # multi has no hotpotqa run, so its average is left out rather than taken over nq alone.
    assert markdown_report(runs) == (
        "## Exact match\n\n"
        "| Method | NQ | HotpotQA | Avg. |\n"
        "| --- | --- | --- | --- |\n"
        "| single | 0.500 | 0.000 | 0.250 |\n"
        "| multi | 1.000 | – | – |\n\n"
        "## Search behaviour (over all questions of a row)\n\n"
        "| Method | n | EM | F1 | Rounds | Queries/round | Tokens | s/question | Evidence recall | All evidence "
        "| Passages read |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        "| single | 4 | 0.250 | 0.400 | 2.50 | 1.00 | 125.0 | 2.50 | 0.500 | 0.000 | 9.0 |\n"
        "| multi | 2 | 1.000 | 1.000 | 1.00 | 2.00 | 80.0 | 1.00 | – | – | – |\n"
    )


def test_runs_load_from_label_dataset_dirs_and_report_is_written(runs, tmp_path):
    for run in runs:
        d = tmp_path / run.label / run.dataset
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(run.summary))
    loaded = load_runs(tmp_path)
    assert {(r.label, r.dataset) for r in loaded} == {(r.label, r.dataset) for r in runs}
    md, png = write_report(loaded, tmp_path / "report")
    assert "| single | 0.500 | 0.000 | 0.250 |" in md.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_load_runs_names_an_empty_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_runs(tmp_path)
