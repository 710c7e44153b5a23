from __future__ import annotations

import pytest

from rag_r1.search.corpus import split_title
from scripts.quickstart.make_demo_data import DEFAULT_OUT, build_world, make_demo_data, split_questions


def test_same_seed_same_bytes_other_seed_other_world(tmp_path):
    counts = make_demo_data(tmp_path / "a", seed=3)
    make_demo_data(tmp_path / "b", seed=3)
    make_demo_data(tmp_path / "c", seed=4)
    for name in ("corpus.jsonl", "train.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
    assert counts == {"corpus": 89, "train": 216, "test": 48}


def test_committed_demo_data_is_what_the_generator_grows(tmp_path):
    make_demo_data(tmp_path, seed=0)
    for name in ("corpus.jsonl", "train.jsonl", "test.jsonl"):
        assert (DEFAULT_OUT / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_every_question_needs_both_of_its_passages():
    passages, questions = build_world(seed=0)
    by_id = {p["id"]: split_title(p["contents"]) for p in passages}
    assert len(by_id) == len(passages)
    assert len({q["question"] for q in questions}) == len(questions)
    assert sum(q["type"] == "comparison" for q in questions) == 72
    for q in questions:
        assert set(q) == {"id", "question", "golden_answers", "supporting_ids", "type"}
        first, second = q["supporting_ids"]
        (title1, text1), (title2, text2) = by_id[first], by_id[second]
        answer = q["golden_answers"][0]
        assert 1 <= len(answer.split()) <= 3, q
        if q["type"] == "bridge":
            # The question names the first passage's entity, that passage names the bridge (the second
            # passage's title), and only the second passage holds the answer.
            assert title1 in q["question"], q
            assert title2 in text1, q
            assert answer in text2, q
            assert answer not in text1 and answer not in q["question"], q
        else:
            # Both entities are named: one parallel round finds both passages.
            assert title1 in q["question"] and title2 in q["question"], q
            assert answer in (title1, title2, "yes", "no"), q


def test_comparison_answers_follow_from_the_two_passages():
    import re

    passages, questions = build_world(seed=0)
    text = {p["id"]: split_title(p["contents"])[1] for p in passages}
    year = {"born": r"\(born (\d+)\)", "founded": r"founded in (\d+)"}
    city = r"born in (\w+)"
    kinds = set()
    for q in (q for q in questions if q["type"] == "comparison"):
        a, b = (text[i] for i in q["supporting_ids"])
        titles = [split_title(next(p["contents"] for p in passages if p["id"] == i))[0] for i in q["supporting_ids"]]
        if q["question"].startswith("Were"):
            kinds.add("same city")
            same = re.search(city, a).group(1) == re.search(city, b).group(1)
            assert q["golden_answers"] == ["yes" if same else "no"], q
        else:
            kinds.add("first")
            pattern = year["born"] if "born" in q["question"] else year["founded"]
            years = [int(re.search(pattern, t).group(1)) for t in (a, b)]
            assert years[0] != years[1]
            assert q["golden_answers"] == [titles[years.index(min(years))]], q
    assert kinds == {"same city", "first"}


def test_split_is_disjoint_stratified_and_checks_its_size():
    _, questions = build_world(seed=0)
    train, test = split_questions(questions, 48, seed=0)
    assert len(test) == 48 and len(train) == len(questions) - 48
    # 72 of 264 questions are comparisons: 13 of 48 held out
    assert sum(q["type"] == "comparison" for q in test) == round(48 * 72 / 264)
    assert not {q["id"] for q in train} & {q["id"] for q in test}
    with pytest.raises(ValueError, match="--test-size"):
        split_questions(questions, len(questions), seed=0)
