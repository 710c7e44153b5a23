from __future__ import annotations

import pytest

from rag_r1.eval.metrics import (answer_outcomes, answer_scores, answer_was_retrieved, evidence_by_round, is_yes_no,
                                 summarize)
from rag_r1.reward.evidence import evidence_metrics

BASE_KEYS = {"n", "em", "f1", "answered", "turns", "rounds", "queries", "queries_per_round", "tokens",
             "seconds_per_question"}
EVIDENCE_KEYS = {"evidence_recall", "evidence_all", "evidence_recall_by_round", "retrieved_per_question"}


def row(answer, golden, retrieved, queries, turns, tokens, seconds, supporting=None):
    r = {"answer": answer, "golden_answers": golden, **answer_scores(answer, golden), "turns": turns,
         "searches": len(queries), "queries": queries, "retrieved": retrieved, "tokens": tokens,
         "seconds": seconds}
    if supporting is not None:
        r["supporting_ids"] = supporting
    return r


@pytest.fixture
def rows():
    return [
        # right answer; evidence half found in round 1, complete in round 2 (a seen again: once)
        row("Paris", ["Paris"], [["a", "x", "y"], ["a", "b", "z"]], [["q1"], ["q2", "q3"]], 3, 100, 2.0, ["a", "b"]),
        # partial answer; one round of three queries finds one of two
        row("the Eiffel tower", ["Eiffel Tower in Paris"], [["c", "c2", "c3"]], [["q1", "q2", "q3"]], 2, 50, 1.0,
            ["c", "d"]),
        # never searched, never answered
        row(None, ["x"], [], [], 1, 30, 3.0, ["e", "f"]),
    ]


def test_answer_scores_normalize_and_take_the_best_golden():
    assert answer_scores("The Paris!", ["paris"]) == {"em": 1.0, "f1": 1.0}
    assert answer_scores(None, ["paris"]) == {"em": 0.0, "f1": 0.0}
    # pred {eiffel, tower} vs gold {eiffel, tower, in, paris}: P = 1, R = 1/2, F1 = 2/3
    assert answer_scores("the Eiffel tower", ["Eiffel Tower in Paris"]) == {"em": 0.0, "f1": pytest.approx(2 / 3)}
    assert answer_scores("Eiffel tower", ["Louvre", "Eiffel Tower"]) == {"em": 1.0, "f1": 1.0}


def test_evidence_by_round_counts_duplicates_once():
    assert evidence_by_round([["a", "x"], ["b"]], ["a", "b"]) == [0.5, 1.0]
    assert evidence_by_round([["a", "a"], ["a"]], ["a", "b"]) == [0.5, 0.5]
    assert evidence_by_round([], ["a", "b"]) == []


def test_summary_on_hand_made_trajectories(rows):
    s = summarize(rows)
    assert set(s) == BASE_KEYS | EVIDENCE_KEYS
    assert s["n"] == 3
    assert s["em"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert s["answered"] == pytest.approx(2 / 3)
    assert s["turns"] == pytest.approx(2.0)
    assert s["rounds"] == pytest.approx(1.0)  # (2 + 1 + 0) / 3
    assert s["queries"] == pytest.approx(2.0)  # (3 + 3 + 0) / 3
    assert s["queries_per_round"] == pytest.approx(2.0)  # 6 queries / 3 rounds
    assert s["tokens"] == pytest.approx(60.0)
    assert s["seconds_per_question"] == pytest.approx(2.0)
    assert s["evidence_recall"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert s["evidence_all"] == pytest.approx(1 / 3)
    # after round 1: .5, .5, 0; after round 2 the second row keeps its .5
    assert s["evidence_recall_by_round"] == pytest.approx([1 / 3, 1 / 2])
    assert s["retrieved_per_question"] == pytest.approx((5 + 3 + 0) / 3)  # a,x,y,b,z | c,c2,c3 | -


def test_evidence_keys_absent_without_supporting_ids(rows):
    for r in rows:
        del r["supporting_ids"]
    rows[0]["supporting_ids"] = []
    assert evidence_metrics(rows) == {}
    assert set(summarize(rows)) == BASE_KEYS


def test_evidence_only_over_rows_that_have_ids(rows):
    del rows[2]["supporting_ids"]
    e = evidence_metrics(rows)
    assert e["evidence_recall"] == pytest.approx(0.75)
    assert e["evidence_recall_by_round"] == pytest.approx([0.5, 0.75])


def test_summarize_refuses_an_empty_set():
    with pytest.raises(ValueError, match="no trajectories"):
        summarize([])


def outcome_row(question, answer, golden, text, retrieved=(), supporting=None):
    r = {"question": question, "answer": answer, "golden_answers": golden, "text": text,
         "retrieved": [list(retrieved)], **answer_scores(answer, golden)}
    if supporting is not None:
        r["supporting_ids"] = supporting
    return r


def test_is_yes_no_needs_every_golden_answer_to_be_yes_or_no():
    assert is_yes_no(["Yes."]) and is_yes_no(["no", "NO"]) and is_yes_no(["yes", "no"])
    assert not is_yes_no(["yes", "Yes, it is"]) and not is_yes_no(["Noah"]) and not is_yes_no(["yes sir"])
    assert not is_yes_no([])


def test_answer_outcomes_tell_reading_misses_from_search_misses():
    info = "<search> q </search><information> Doc 1(Title: Jim Cummings) voiced Sonic the Hedgehog. </information>"
    rows = [
        outcome_row("Who voiced what hedgehog?", "Sonic", ["Sonic"], info),  # right
        # wrong, a span of the question, and the answer was retrieved: a reading miss
        outcome_row("Who voiced what hedgehog?", "what hedgehog", ["Sonic"], info),
        # wrong, the answer never retrieved ("Son" is in "Sonic" but not as a word)
        outcome_row("Who voiced what hedgehog?", "Knuckles", ["Son"], info),
        # yes/no: retrieved means every supporting passage was; p1 alone is not enough
        outcome_row("Are both A and B films?", "no", ["yes"], info, retrieved=["p1"], supporting=["p1", "p2"]),
        outcome_row("Are both A and B films?", "no", ["yes"], info, retrieved=["p1", "p2"], supporting=["p1", "p2"]),
        # part of a question's word is no copy; the answer was retrieved
        outcome_row("Who voiced Sonic?", "Soni", ["Jim Cummings"], info),
        outcome_row("Who voiced what hedgehog?", None, ["Sonic"], info),  # unanswered
    ]
    assert answer_outcomes(rows) == {"right": 1, "missed_retrieved": 3, "missed_not_retrieved": 2,
                                     "unanswered": 1, "copied_question": 1,
                                     "yes_no": 2, "yes_no_right": 0, "said_yes": 0, "gold_yes": 2}
    counts = answer_outcomes([outcome_row("Are both A and B films?", "Yes.", ["yes"], info),
                              outcome_row("Are both A and B films?", "yes", ["no"], info),
                              outcome_row("Are both A and B films?", "no", ["no"], info)])
    assert {k: counts[k] for k in ("yes_no", "yes_no_right", "said_yes", "gold_yes")} == \
        {"yes_no": 3, "yes_no_right": 2, "said_yes": 2, "gold_yes": 1}
    # the answer in the policy's own words only (no <information>) was not retrieved
    assert not answer_was_retrieved(outcome_row("q", "x", ["Sonic"], "<answer> Sonic </answer>"))
