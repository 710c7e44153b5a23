"""What every retrieval backend provides, so the server never branches on the backend."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class Retriever(Protocol):
    """A searchable index over the rows of one corpus.

    `search` returns `(scores, rows)`, both [n_queries, topk]: float32 scores (higher is better) and
    int64 corpus rows, best first. A row of -1 means "no more hits" (the index holds fewer than
    topk passages, or an approximate index found fewer); callers drop those.
    """

    name: str

    @property
    def size(self) -> int:
        """Number of passages in the index (must equal the corpus length)."""

    def search(self, queries: list[str], topk: int) -> tuple[np.ndarray, np.ndarray]: ...


def pad_hits(scores: np.ndarray, rows: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad [n, k<topk] results to [n, topk] with score -inf and row -1."""
    missing = topk - rows.shape[1]
    if missing <= 0:
        return scores.astype(np.float32, copy=False), rows.astype(np.int64, copy=False)
    n = rows.shape[0]
    scores = np.concatenate([scores, np.full((n, missing), -np.inf, dtype=np.float32)], axis=1)
    rows = np.concatenate([rows, np.full((n, missing), -1, dtype=np.int64)], axis=1)
    return scores.astype(np.float32, copy=False), rows.astype(np.int64, copy=False)
