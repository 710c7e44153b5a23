"""Index benchmark rows: a compressed index re-ranking every row recovers exact search."""
from __future__ import annotations

import numpy as np

from scripts.bench.index_bench import benchmark


def test_rerank_rows_restore_the_recall_of_exact_search():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)
    queries = vectors[:40] + rng.normal(scale=0.1, size=(40, 16)).astype(np.float32)
    rows = benchmark(vectors, queries, configs=[("Flat", [{}]), ("PQ4x4", [{}, {"rerank": 300}])], k=5)
    assert [(row["index"], row["search"]) for row in rows] == [
        ("Flat", "exact"), ("PQ4x4", "default"), ("PQ4x4", "rerank=300")]
    flat, codes, reranked = rows
    assert flat["recall@5"] == reranked["recall@5"] == 1.0
    assert codes["recall@5"] < 0.9
    # the re-ranked row's size is the codes' alone: the full vectors stay on disk
    assert reranked["bytes"] == codes["bytes"] < flat["bytes"] / 4
