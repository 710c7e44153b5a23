import json

import pytest

from rag_r1.eval.report import read_jsonl
from rag_r1.search.corpus import iter_passages, split_title
from scripts.data_process import closed_corpus
from scripts.data_process.closed_corpus import split_test

HOTPOT_ROWS = [
    {"_id": "q1", "question": "Which city is the capital of the country where the Seine flows?",
     "answer": "Paris",
     "supporting_facts": [["Seine", 0], ["France", 1], ["France", 0]],
     "context": [["Seine", ["The Seine is a river.", " It flows through France."]],
                 ["France", ["France is a country.", " Its capital is Paris."]],
                 ["Rhine", ["The Rhine is a river in Germany."]]]},
    # Shares the identical "France" paragraph with q1: it must be stored once.
    {"_id": "q2", "question": "What river runs through Germany?", "answer": "Rhine",
     "supporting_facts": [["Rhine", 0], ["Danube", 0]],
     "context": [["France", ["France is a country.", " Its capital is Paris."]],
                 ["Rhine", ["The Rhine is a river in Germany.", "  "]]]},
    {"_id": "q3", "question": "No context here?", "answer": "none", "supporting_facts": [], "context": []},
]

HOTPOT_CORPUS = [
    {"id": "p0", "contents": '"Seine"\nThe Seine is a river. It flows through France.'},
    {"id": "p1", "contents": '"France"\nFrance is a country. Its capital is Paris.'},
    {"id": "p2", "contents": '"Rhine"\nThe Rhine is a river in Germany.'},
]
HOTPOT_QUESTIONS = [
    {"id": "q1", "question": "Which city is the capital of the country where the Seine flows?",
     "golden_answers": ["Paris"], "supporting_ids": ["p0", "p1"]},
    {"id": "q2", "question": "What river runs through Germany?", "golden_answers": ["Rhine"],
     "supporting_ids": ["p2"]},
]

MUSIQUE_ROWS = [
    {"id": "2hop_1", "question": "Who founded the company that makes the iPhone?", "answer": "Steve Jobs",
     "answer_aliases": ["Jobs", "Steve Jobs"], "answerable": True,
     "paragraphs": [{"idx": 0, "title": "iPhone", "paragraph_text": "The iPhone is made by Apple. ",
                     "is_supporting": True},
                    {"idx": 1, "title": "Apple Inc.", "paragraph_text": "Apple was founded by Steve Jobs.",
                     "is_supporting": True},
                    {"idx": 2, "title": "Pear", "paragraph_text": "A pear is a fruit.", "is_supporting": False}]},
    {"id": "2hop_2", "question": "Unanswerable one?", "answer": "", "answer_aliases": [], "answerable": False,
     "paragraphs": [{"idx": 0, "title": "Pear", "paragraph_text": "A pear is a fruit.", "is_supporting": False}]},
    {"id": "2hop_3", "question": "Which fruit is a pear?", "answer": "pear", "answer_aliases": [],
     "paragraphs": [{"idx": 0, "title": "Pear", "paragraph_text": "A pear is a fruit.", "is_supporting": True}]},
    {"id": "2hop_4", "question": "Empty?", "answer": "x", "answer_aliases": [], "paragraphs": []},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("layout", ["json_list", "jsonl"])
def test_hotpotqa_gives_exact_corpus_and_questions(layout, tmp_path, capsys):
    source = tmp_path / "hotpot.json"
    if layout == "json_list":
        source.write_text(json.dumps(HOTPOT_ROWS, indent=1))
    else:
        write_jsonl(source, HOTPOT_ROWS)
    out = tmp_path / "out"
    closed_corpus.main(["--format", "hotpotqa", "--input", str(source), "--out", str(out)])
    assert read_jsonl(out / "corpus.jsonl") == HOTPOT_CORPUS
    assert read_jsonl(out / "questions.jsonl") == HOTPOT_QUESTIONS
    # The retrieval stack reads the corpus as written.
    assert [split_title(p["contents"]) for p in iter_passages(out / "corpus.jsonl")][1] == \
        ("France", "France is a country. Its capital is Paris.")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{out}: 3 passages, 2 questions; skipped rows: 1 no paragraphs"
    # q2 cites "Danube", which is not among its paragraphs.
    assert printed[1].startswith("warning: 1 supporting-fact titles were not among")


def test_musique_gives_exact_corpus_and_questions(tmp_path, capsys):
    source = write_jsonl(tmp_path / "musique.jsonl", MUSIQUE_ROWS)
    out = tmp_path / "out"
    closed_corpus.main(["--format", "musique", "--input", str(source), "--out", str(out), "--id-prefix", "mq"])
    assert read_jsonl(out / "corpus.jsonl") == [
        {"id": "mq0", "contents": '"iPhone"\nThe iPhone is made by Apple.'},
        {"id": "mq1", "contents": '"Apple Inc."\nApple was founded by Steve Jobs.'},
        {"id": "mq2", "contents": '"Pear"\nA pear is a fruit.'},
    ]
    assert read_jsonl(out / "questions.jsonl") == [
        {"id": "2hop_1", "question": "Who founded the company that makes the iPhone?",
         "golden_answers": ["Steve Jobs", "Jobs"], "supporting_ids": ["mq0", "mq1"]},
        {"id": "2hop_3", "question": "Which fruit is a pear?", "golden_answers": ["pear"],
         "supporting_ids": ["mq2"]},
    ]
    assert capsys.readouterr().out.strip() == \
        f"{out}: 3 passages, 2 questions; skipped rows: 1 unanswerable, 1 no paragraphs"


def test_test_share_writes_a_deterministic_order_free_split(tmp_path):
    rows = [{"_id": f"q{i}", "question": f"Question {i}?", "answer": str(i), "supporting_facts": [],
             "context": [[f"T{i}", [f"Text {i}."]]]} for i in range(10)]
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    closed_corpus.main(["--format", "hotpotqa", "--input", str(write_jsonl(tmp_path / "a.jsonl", rows)),
                        "--out", str(out_a), "--test-share", "0.2", "--seed", "7"])
    closed_corpus.main(["--format", "hotpotqa", "--input", str(write_jsonl(tmp_path / "b.jsonl", rows[::-1])),
                        "--out", str(out_b), "--test-share", "0.2", "--seed", "7"])
    train, test = read_jsonl(out_a / "train.jsonl"), read_jsonl(out_a / "test.jsonl")
    assert len(train) == 8 and len(test) == 2
    assert sorted(q["id"] for q in train + test) == sorted(f"q{i}" for i in range(10))
    assert [q["id"] for q in train] == sorted((q["id"] for q in train), key=lambda x: int(x[1:]))
    # The same questions land in test whatever the input order.
    assert {q["id"] for q in read_jsonl(out_b / "test.jsonl")} == {q["id"] for q in test}
    assert not (out_a / "questions.jsonl").exists()


def test_split_depends_on_seed_and_keeps_exact_share():
    questions = [{"id": f"q{i}"} for i in range(50)]
    splits = {seed: {q["id"] for q in split_test(questions, 0.2, seed)[1]} for seed in range(3)}
    assert all(len(ids) == 10 for ids in splits.values())
    assert len({frozenset(ids) for ids in splits.values()}) == 3


@pytest.mark.parametrize("row, message", [
    ({"_id": "q9", "answer": "x", "context": []}, r"hot.jsonl: row 2 \(id q9\): missing key 'question'"),
    ({"_id": "q9", "question": "Q?", "answer": "x", "context": [["T", "not a list"]]},
     r"row 2 \(id q9\): a context entry must be \[title, \[sentence, ...\]\]"),
    ({"question": "Q?", "answer": "x", "context": []}, r"row 2: missing key '_id'"),
    (["not", "an", "object"], r"row 2: expected a JSON object, got list"),
])
def test_malformed_row_error_names_the_row(row, message, tmp_path):
    source = write_jsonl(tmp_path / "hot.jsonl", [HOTPOT_ROWS[0], row])
    with pytest.raises(closed_corpus.MalformedRow, match=message):
        closed_corpus.main(["--format", "hotpotqa", "--input", str(source), "--out", str(tmp_path / "o")])


def test_broken_json_line_and_duplicate_ids_are_named(tmp_path):
    source = tmp_path / "m.jsonl"
    source.write_text(json.dumps(MUSIQUE_ROWS[0]) + "\n{broken\n")
    with pytest.raises(closed_corpus.MalformedRow, match=r"m.jsonl: row 2 is not valid JSON"):
        closed_corpus.main(["--format", "musique", "--input", str(source), "--out", str(tmp_path / "o")])
    write_jsonl(source, [MUSIQUE_ROWS[0], MUSIQUE_ROWS[0]])
    with pytest.raises(closed_corpus.MalformedRow, match=r"row 2: question id 2hop_1 appears twice"):
        closed_corpus.main(["--format", "musique", "--input", str(source), "--out", str(tmp_path / "o")])
