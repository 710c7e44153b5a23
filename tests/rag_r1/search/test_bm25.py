"""BM25 retriever built from the corpus file, in process."""
from __future__ import annotations

import pytest
from search_testdata import PASSAGES

from rag_r1.search.bm25 import BM25Retriever, build_bm25


def test_build_and_search(bm25_dir):
    retriever = BM25Retriever(bm25_dir)
    assert retriever.size == len(PASSAGES)
    scores, rows = retriever.search(["Neil Armstrong Moon", "Kilimanjaro volcano"], topk=3)
    assert rows.shape == scores.shape == (2, 3)
    assert rows[:, 0].tolist() == [7, 2]
    # only one passage mentions these words: the other slots are "no hit"
    assert rows[:, 1:].tolist() == [[-1, -1], [-1, -1]]
    assert (scores[:, 0] > 0).all()


def test_query_of_stopwords_only_has_no_hits(bm25_dir):
    scores, rows = BM25Retriever(bm25_dir).search(["the of and"], topk=2)
    assert rows.tolist() == [[-1, -1]]


def test_missing_index_dir_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="BM25 index not found: .*rag_r1_meta.json"):
        BM25Retriever(tmp_path / "nothing")


def test_empty_corpus_is_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="holds no passages"):
        build_bm25(empty, tmp_path / "out")
