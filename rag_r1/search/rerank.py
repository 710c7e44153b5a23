"""A compressed FAISS index whose candidates are re-scored exactly against the full vectors.

PQ or IVF-PQ codes are small enough to keep in RAM (IVF65536,PQ64 at d=1024: about 80 bytes a
passage against Flat's 4,096), but their scores are approximate, so the top hits drift from exact
search. `RerankedIndex` asks the compressed index for `depth` candidates per query, reads those
candidates' full vectors from a memory-mapped fp16 file (corpus order, row r = passage r) and
returns the best `k` by exact inner product. Only the rows read are paged in, so the full vectors
stay on disk; recall is Flat's whenever Flat's top k are among the candidates.

    vectors file: a .npy array [ntotal, d] of float16 (or float32), written by
    scripts/build_corpus/build_corpus_index.py --rerank-vectors
"""
from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

RERANK_SUFFIX = "+rerank"


def parse_index_spec(spec: str) -> tuple[str, int | None]:
    """'IVF64,PQ16+rerank100' -> ('IVF64,PQ16', 100); a plain factory string -> (spec, None).

    The benchmarks name a re-ranked index this way beside the plain FAISS factory strings."""
    factory, sep, depth = spec.partition(RERANK_SUFFIX)
    if not sep:
        return spec, None
    if not depth.isdigit() or int(depth) < 1:
        raise ValueError(f"{spec!r}: expected FACTORY{RERANK_SUFFIX}N with N >= 1 candidates")
    return factory, int(depth)


def open_vectors(path: str | Path) -> np.ndarray:
    """The full vectors, memory-mapped read-only (nothing is read until rows are used)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"re-rank vectors file not found: {path}")
    vectors = np.load(path, mmap_mode="r")
    if vectors.ndim != 2 or vectors.dtype not in (np.float16, np.float32):
        raise ValueError(f"{path}: expected a 2-d float16 or float32 array, got {vectors.dtype} {vectors.shape}")
    return vectors


class RerankedIndex:
    """Search like a FAISS index (`search`, `ntotal`, `d`), re-ranking `depth` candidates exactly."""

    def __init__(self, base: faiss.Index, vectors: np.ndarray, depth: int):
        if vectors.shape != (base.ntotal, base.d):
            raise ValueError(f"re-rank vectors of shape {vectors.shape} do not match the index "
                             f"({base.ntotal} vectors of dim {base.d}): build them from the same embeddings")
        if depth < 1:
            raise ValueError(f"re-rank depth must be >= 1, got {depth}")
        self.base = base
        self.vectors = vectors
        self.depth = depth

    @property
    def ntotal(self) -> int:
        return int(self.base.ntotal)

    @property
    def d(self) -> int:
        return int(self.base.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [n, k] float32, rows [n, k] int64), best first; -1 rows when fewer candidates."""
        _, candidates = self.base.search(queries, max(k, self.depth))
        found = candidates >= 0
        # One sorted read of every distinct candidate row: pages are touched once, in file order.
        rows, inverse = np.unique(candidates[found], return_inverse=True)
        full = np.asarray(self.vectors[rows], dtype=np.float32)
        query_of = np.nonzero(found)[0]
        exact = np.full(candidates.shape, -np.inf, dtype=np.float32)
        exact[found] = np.einsum("ij,ij->i", full[inverse], queries[query_of])
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(exact, order, axis=1)
        best = np.take_along_axis(candidates, order, axis=1)
        best[np.isneginf(scores)] = -1
        return scores, best
