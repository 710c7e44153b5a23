from __future__ import annotations

import pytest

from rag_r1.reward.qa_em import (compute_score_em, compute_score_f1, em_check, extract_solution, f1_check,
                                 normalize_answer, subem_check)


@pytest.mark.parametrize("raw, normalized", [
    ("The Beatles", "beatles"),
    ("  an   Apple\tPie!! ", "apple pie"),
    ("A.B.C.", "abc"),  # punctuation removed, not replaced by spaces (as in SQuAD)
    ("Theatre", "theatre"),  # "the" only as a whole word
    ("São Paulo", "são paulo"),
    ("", ""),
])
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_em_check_against_string_or_list():
    assert em_check("the eiffel tower.", "Eiffel Tower") == 1
    assert em_check("Eiffel", ["Eiffel Tower", "Tour Eiffel"]) == 0
    assert em_check("tour eiffel", ["Eiffel Tower", "Tour Eiffel"]) == 1
    assert subem_check("it is the Eiffel Tower", ["eiffel tower"]) == 1


def test_extract_solution_last_complete_answer_wins():
    assert extract_solution("<answer> a </answer> then <answer>\n b \n</answer>") == "b"
    assert extract_solution("<answer> a </answer> then <answer> unclosed") == "a"
    assert extract_solution("no answer") is None
    assert extract_solution("<answer></answer>") == ""


def test_compute_score_em_scores_the_response_only():
    gt = {"target": ["Paris"]}
    assert compute_score_em("<think> hm </think><answer> paris </answer>", gt) == 1.0
    assert compute_score_em("<answer> Lyon </answer>", gt) == 0.0
    assert compute_score_em("<answer> Lyon </answer>", gt, format_score=0.1) == 0.1
    assert compute_score_em("<answer> Paris </answer>", {"target": "Paris"}, score=2.0) == 2.0
    # the last answer counts, not the first
    assert compute_score_em("<answer> Paris </answer> wait <answer> Lyon </answer>", gt) == 0.0
    # no answer -> 0, even with format_score (Search-R1 would have read the prompt's example answer)
    assert compute_score_em("I think it is Paris", gt, format_score=0.1) == 0.0
    # the prompt's example answer is not part of the response, so it never scores
    assert compute_score_em("<search> capital </search>", {"target": "Marie Curie"}) == 0.0


def test_f1():
    # pred "paris france", gold "paris": precision 1/2, recall 1 -> 2/3
    assert f1_check("Paris, France", "Paris") == pytest.approx(2 / 3)
    assert f1_check("Lyon", ["Paris", "Lyon city"]) == pytest.approx(2 / 3)
    assert compute_score_f1("no answer", {"target": "x"}) == 0.0
    assert compute_score_f1("<answer> the Paris </answer>", {"target": "Paris"}) == 1.0
