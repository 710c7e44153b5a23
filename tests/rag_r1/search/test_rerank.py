"""Compressed index + exact re-rank against memory-mapped full vectors."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from rag_r1.search.rerank import RerankedIndex, open_vectors, parse_index_spec

DIM = 16


@pytest.fixture(scope="module")
def vectors():
    x = np.random.default_rng(0).normal(size=(400, DIM)).astype(np.float32)
    # fp16-representable unit vectors, so the re-rank's fp16 file holds exactly what Flat holds
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)


@pytest.fixture(scope="module")
def pq_index(vectors):
    index = faiss.index_factory(DIM, "PQ4x4", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    return index


def exact(vectors, queries, k):
    flat = faiss.IndexFlatIP(DIM)
    flat.add(vectors)
    return flat.search(queries, k)


@pytest.mark.parametrize("spec,parsed", [
    ("IVF64,PQ16", ("IVF64,PQ16", None)), ("IVF64,PQ16+rerank100", ("IVF64,PQ16", 100)), ("PQ8+rerank1", ("PQ8", 1)),
])
def test_parse_index_spec(spec, parsed):
    assert parse_index_spec(spec) == parsed


def test_parse_index_spec_rejects_a_bad_depth():
    with pytest.raises(ValueError, match="FACTORY\\+rerankN with N >= 1"):
        parse_index_spec("PQ8+rerank0")


def test_reranking_every_row_is_exact_search(vectors, pq_index):
    queries = vectors[:30] + 0.1
    reranked = RerankedIndex(pq_index, vectors.astype(np.float16), depth=len(vectors))
    scores, rows = reranked.search(queries, 5)
    exact_scores, exact_rows = exact(vectors, queries, 5)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5)
    assert rows.dtype == np.int64 and scores.dtype == np.float32


def test_rerank_orders_the_candidates_exactly(vectors, pq_index):
    queries = vectors[100:160]
    depth, k = 20, 5
    _, candidates = pq_index.search(queries, depth)
    scores, rows = RerankedIndex(pq_index, vectors.astype(np.float16), depth).search(queries, k)
    # The answer is the exact top k of the compressed index's candidates, whatever PQ scored them.
    for query, cand, got in zip(queries, candidates, rows):
        by_exact = cand[np.argsort(-(vectors[cand] @ query), kind="stable")][:k]
        assert got.tolist() == by_exact.tolist()
    # and it finds at least as much of exact search's top k as PQ's own ranking does
    _, exact_rows = exact(vectors, queries, k)
    overlap = lambda found: np.mean([len(set(a) & set(e)) for a, e in zip(found, exact_rows)])  # noqa: E731
    assert overlap(rows) >= overlap(pq_index.search(queries, k)[1])


def test_missing_candidates_stay_no_hit_rows(vectors):
    ivf = faiss.index_factory(DIM, "IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors)
    ivf.add(vectors[:12])  # 12 rows over 8 lists: one probed list holds fewer than 10
    ivf.nprobe = 1
    scores, rows = RerankedIndex(ivf, vectors[:12], depth=10).search(vectors[:3], 10)
    assert (rows == -1).any(axis=1).all()
    assert np.isneginf(scores[rows == -1]).all() and np.isfinite(scores[rows >= 0]).all()


def test_vectors_must_match_the_index(vectors, pq_index):
    with pytest.raises(ValueError, match=r"shape \(399, 16\) do not match the index \(400 vectors of dim 16\)"):
        RerankedIndex(pq_index, vectors[:399], depth=10)


def test_open_vectors_maps_the_file_and_checks_it(tmp_path, vectors):
    np.save(tmp_path / "v.npy", vectors.astype(np.float16))
    mapped = open_vectors(tmp_path / "v.npy")
    assert isinstance(mapped, np.memmap) and mapped.dtype == np.float16 and mapped.shape == (400, DIM)
    np.save(tmp_path / "bad.npy", np.zeros(5, dtype=np.float16))
    with pytest.raises(ValueError, match="expected a 2-d float16 or float32 array"):
        open_vectors(tmp_path / "bad.npy")
    with pytest.raises(FileNotFoundError, match="re-rank vectors file not found"):
        open_vectors(tmp_path / "none.npy")
