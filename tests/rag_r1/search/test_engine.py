"""SearchEngine: micro-batching, dedupe and the LRU cache around a recording fake retriever."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from rag_r1.search.engine import LRUCache, SearchEngine, unique_in_order


class RecordingRetriever:
    """Query q's hits are rows (len(q) + j) % 100 with score -j: easy to check, order-independent."""

    name = "fake"
    size = 100

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple[list[str], int]] = []
        self.fail_on = fail_on

    def search(self, queries: list[str], topk: int):
        self.calls.append((list(queries), topk))
        if self.fail_on in queries:
            raise RuntimeError(f"cannot search {self.fail_on!r}")
        rows = np.array([[(len(q) + j) % 100 for j in range(topk)] for q in queries], dtype=np.int64)
        scores = np.tile(-np.arange(topk, dtype=np.float32), (len(queries), 1))
        return scores, rows


def expected_rows(query: str, topk: int) -> list[int]:
    return [(len(query) + j) % 100 for j in range(topk)]


def run(coro):
    return asyncio.run(coro)


async def with_engine(retriever, body, **kwargs):
    engine = SearchEngine(retriever, **kwargs)
    await engine.start()
    try:
        return await body(engine)
    finally:
        await engine.stop()


def test_concurrent_requests_become_one_search_with_the_same_answers():
    requests = [(["a", "bb"], 2), (["ccc"], 4), (["dddd", "a", "ee"], 1)]
    retriever = RecordingRetriever()

    async def body(engine):
        return await asyncio.gather(*(engine.search(q, k) for q, k in requests))

    batched = run(with_engine(retriever, body, batch_wait_ms=50, dedupe=False))
    # one search for all 6 queries at the largest topk
    assert retriever.calls == [(["a", "bb", "ccc", "dddd", "a", "ee"], 4)]
    for (queries, topk), hits in zip(requests, batched):
        assert [r.tolist() for _, r in hits] == [expected_rows(q, topk) for q in queries]
        assert all(s.tolist() == [-float(j) for j in range(topk)] for s, _ in hits)


def test_batched_equals_one_request_at_a_time():
    requests = [(["alpha", "beta"], 3), (["gamma"], 3), (["beta", "delta"], 2)]

    async def together(engine):
        return await asyncio.gather(*(engine.search(q, k) for q, k in requests))

    async def one_by_one(engine):
        return [await engine.search(q, k) for q, k in requests]

    batched = run(with_engine(RecordingRetriever(), together, batch_wait_ms=50))
    unbatched_retriever = RecordingRetriever()
    unbatched = run(with_engine(unbatched_retriever, one_by_one, micro_batching=False))
    assert len(unbatched_retriever.calls) == 3
    for a, b in zip(batched, unbatched):
        assert [(s.tolist(), r.tolist()) for s, r in a] == [(s.tolist(), r.tolist()) for s, r in b]


def test_dedupe_searches_each_distinct_query_once():
    retriever = RecordingRetriever()

    async def body(engine):
        return await asyncio.gather(engine.search(["x", "yy", "x"], 2), engine.search(["yy"], 2))

    first, second = run(with_engine(retriever, body, batch_wait_ms=50))
    assert retriever.calls == [(["x", "yy"], 2)]
    assert [r.tolist() for _, r in first] == [expected_rows("x", 2), expected_rows("yy", 2), expected_rows("x", 2)]
    assert [r.tolist() for _, r in second] == [expected_rows("yy", 2)]


def test_without_micro_batching_each_request_is_its_own_search():
    retriever = RecordingRetriever()

    async def body(engine):
        return await asyncio.gather(engine.search(["x", "x"], 1), engine.search(["y"], 1))

    run(with_engine(retriever, body, micro_batching=False, dedupe=False))
    assert sorted(retriever.calls) == [(["x", "x"], 1), (["y"], 1)]


def test_cache_answers_repeated_queries_without_searching():
    retriever = RecordingRetriever()

    async def body(engine):
        await engine.search(["x", "y"], 2)
        again = await engine.search(["y", "z"], 2)
        return engine, again

    engine, again = run(with_engine(retriever, body, cache_size=10))
    assert retriever.calls == [(["x", "y"], 2), (["z"], 2)]
    assert [r.tolist() for _, r in again] == [expected_rows("y", 2), expected_rows("z", 2)]
    assert engine.stats.cache_hits == 1
    assert engine.stats.searched_queries == 3


def test_a_failing_search_fails_its_batch_and_the_engine_keeps_serving():
    retriever = RecordingRetriever(fail_on="boom")

    async def body(engine):
        failed = await asyncio.gather(engine.search(["boom"], 1), engine.search(["ok"], 1),
                                      return_exceptions=True)
        later = await engine.search(["fine"], 1)
        return failed, later

    failed, later = run(with_engine(retriever, body, batch_wait_ms=50))
    assert all(isinstance(f, RuntimeError) and "cannot search 'boom'" in str(f) for f in failed)
    assert [r.tolist() for _, r in later] == [expected_rows("fine", 1)]


def test_a_batch_closes_at_max_batch_queries():
    retriever = RecordingRetriever()

    async def body(engine):
        return await asyncio.gather(*(engine.search([f"q{i}", f"r{i}"], 1) for i in range(4)))

    run(with_engine(retriever, body, batch_wait_ms=50, max_batch_queries=4))
    assert [len(q) for q, _ in retriever.calls] == [4, 4]


def test_lru_cache_evicts_the_least_recently_used():
    cache = LRUCache(2)
    batch_rows = np.arange(6, dtype=np.int64).reshape(3, 2)
    for i, key in enumerate(["a", "b"]):
        cache.put((key, 2), (np.zeros(2, np.float32), batch_rows[i]))
    assert cache.get(("a", 2))[1].tolist() == [0, 1]  # a is now the most recent
    cache.put(("c", 2), (np.zeros(2, np.float32), batch_rows[2]))
    assert cache.get(("b", 2)) is None
    assert cache.get(("a", 2))[1].tolist() == [0, 1] and cache.get(("c", 2))[1].tolist() == [4, 5]
    assert len(cache) == 2
    assert cache.get(("c", 2))[1].base is None  # a copy, not a view keeping the batch alive


def test_a_zero_capacity_cache_stores_nothing():
    cache = LRUCache(0)
    cache.put(("a", 1), (np.zeros(1), np.zeros(1)))
    assert len(cache) == 0 and cache.get(("a", 1)) is None


@pytest.mark.parametrize("items,distinct,positions", [
    (["a", "b", "a", "c", "b"], ["a", "b", "c"], [0, 1, 0, 2, 1]),
    (["x"], ["x"], [0]),
    ([], [], []),
])
def test_unique_in_order(items, distinct, positions):
    assert unique_in_order(items) == (distinct, positions)


def test_a_lone_sequential_client_does_not_wait_for_stragglers():
    retriever = RecordingRetriever()

    async def body(engine):
        start = time.perf_counter()
        for q in ["a", "b", "c"]:
            await engine.search([q], 1)
        return time.perf_counter() - start

    seconds = run(with_engine(retriever, body, batch_wait_ms=2000))
    assert seconds < 1.5  # three 2 s waits would take 6 s
    assert [q for q, _ in retriever.calls] == [["a"], ["b"], ["c"]]


def test_after_a_concurrent_batch_the_next_batch_waits_for_stragglers():
    retriever = RecordingRetriever()

    async def body(engine):
        await asyncio.gather(engine.search(["a"], 1), engine.search(["b"], 1))

        async def late(q, delay):
            await asyncio.sleep(delay)
            return await engine.search([q], 1)

        await asyncio.gather(late("c", 0.0), late("d", 0.05))

    run(with_engine(retriever, body, batch_wait_ms=500))
    assert [q for q, _ in retriever.calls] == [["a", "b"], ["c", "d"]]


def test_searching_before_start_is_a_clear_error():
    async def body():
        return await SearchEngine(RecordingRetriever()).search(["q"], 1)

    with pytest.raises(RuntimeError, match="micro-batching worker is not running"):
        run(body())
