"""BM25 retriever built from the corpus file, in process."""
from __future__ import annotations

import bm25s
import numpy as np
import pytest
from search_testdata import PASSAGES

from rag_r1.search import bm25
from rag_r1.search.bm25 import BM25Retriever, build_bm25, tokenize
from rag_r1.search.corpus import iter_passages


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


QUERIES = ["Neil Armstrong Moon", "Kilimanjaro volcano Africa highest", "the tower in Paris", "zzz qqq"]


def all_scores(model, query):
    """Every passage's score for `query`, in row order."""
    result = model.retrieve(tokenize([query]), k=len(PASSAGES), show_progress=False)
    scores = np.zeros(len(PASSAGES), dtype=np.float32)
    scores[result.documents[0]] = result.scores[0]
    return scores


def test_chunked_build_scores_like_bm25s_in_memory_index(small_corpus, tmp_path):
    chunked = BM25Retriever(build_bm25(small_corpus, tmp_path / "chunked", chunk_size=3, show_progress=False))
    reference = bm25s.BM25()
    reference.index(tokenize([p["contents"] for p in iter_passages(small_corpus)]), show_progress=False)
    for query in QUERIES:
        np.testing.assert_allclose(all_scores(chunked.model, query), all_scores(reference, query), rtol=1e-6)
    assert not (tmp_path / "chunked" / "build").exists()
    # served memory-mapped: the score arrays stay on disk
    assert isinstance(chunked.model.scores["data"], np.memmap)


def test_killed_build_resumes_from_its_finished_chunks(small_corpus, tmp_path, monkeypatch):
    written = []
    real_write_chunk = bm25._write_chunk

    def write_then_die(path, *args, **kwargs):
        if len(written) == 1:
            raise KeyboardInterrupt
        written.append(path.name)
        real_write_chunk(path, *args, **kwargs)

    monkeypatch.setattr(bm25, "_write_chunk", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_bm25(small_corpus, tmp_path / "index", chunk_size=3, show_progress=False)
    monkeypatch.setattr(bm25, "_write_chunk", lambda path, *a, **k: (written.append(path.name),
                                                                      real_write_chunk(path, *a, **k)))
    resumed = BM25Retriever(build_bm25(small_corpus, tmp_path / "index", chunk_size=3, show_progress=False))
    # 8 passages in chunks of 3: chunk 0 survived the kill, only chunks 1 and 2 were tokenized again
    assert written == ["chunk_000000", "chunk_000001", "chunk_000002"]
    fresh = BM25Retriever(build_bm25(small_corpus, tmp_path / "fresh", chunk_size=8, show_progress=False))
    for query in QUERIES:
        np.testing.assert_allclose(all_scores(resumed.model, query), all_scores(fresh.model, query), rtol=1e-6)


def test_columns_written_in_several_blocks_equal_one_block(small_corpus, tmp_path, monkeypatch):
    one = BM25Retriever(build_bm25(small_corpus, tmp_path / "one", chunk_size=3, show_progress=False))
    monkeypatch.setattr(bm25, "ENTRIES_PER_PASSAGE", 2)  # blocks of 6 entries: a few terms each
    blocks = BM25Retriever(build_bm25(small_corpus, tmp_path / "blocks", chunk_size=3, show_progress=False))
    for name in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(np.asarray(blocks.model.scores[name]), np.asarray(one.model.scores[name]))
