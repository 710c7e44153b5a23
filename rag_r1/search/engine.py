"""The search engine behind the server: LRU cache, dedupe and micro-batching around one retriever.

RL rollouts send many small concurrent requests (1-3 queries each). Encoding and searching them one
request at a time wastes the batch dimension of the encoder and of FAISS, so concurrent requests
are gathered for a few milliseconds and served by ONE encode and ONE search. The retriever runs on
a single worker thread: the event loop keeps accepting requests (which join the next batch) while a
batch computes, and the encoder's own threads are never oversubscribed.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from rag_r1.search.retriever import Retriever

# One query's result: (scores [topk] float32, rows [topk] int64, -1 = no hit).
Hits = tuple[np.ndarray, np.ndarray]


class LRUCache:
    """Bounded map from (query, topk) to hits; the least recently used entry goes first."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, int], Hits] = OrderedDict()

    def get(self, key: tuple[str, int]) -> Hits | None:
        hits = self._items.get(key)
        if hits is not None:
            self._items.move_to_end(key)
        return hits

    def put(self, key: tuple[str, int], hits: Hits) -> None:
        if self.capacity <= 0:
            return
        # copies: the hits are rows of a whole batch's arrays, which must not stay alive with them
        self._items[key] = (hits[0].copy(), hits[1].copy())
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class _Job:
    queries: list[str]
    topk: int
    future: asyncio.Future = field(repr=False)


@dataclass
class EngineStats:
    requests: int = 0
    queries: int = 0            # as asked, before cache and dedupe
    cache_hits: int = 0
    searched_queries: int = 0   # what the retriever actually computed
    batches: int = 0


def unique_in_order(items: list[str]) -> tuple[list[str], list[int]]:
    """(distinct items in first-seen order, position of each input item in that list)."""
    first_seen: dict[str, int] = {}
    positions = [first_seen.setdefault(item, len(first_seen)) for item in items]
    return list(first_seen), positions


class SearchEngine:
    def __init__(
        self,
        retriever: Retriever,
        micro_batching: bool = True,
        dedupe: bool = True,
        cache_size: int = 0,
        batch_wait_ms: float = 3.0,
        max_batch_queries: int = 512,
    ):
        self.retriever = retriever
        self.micro_batching = micro_batching
        self.dedupe = dedupe
        self.cache = LRUCache(cache_size)
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.max_batch_queries = max_batch_queries
        self.stats = EngineStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retriever")
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._last_batch_requests = 0

    async def start(self) -> None:
        if self.micro_batching and self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._batch_loop())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def search(self, queries: list[str], topk: int) -> list[Hits]:
        """Hits for every query, in order."""
        self.stats.requests += 1
        self.stats.queries += len(queries)
        results: list[Hits | None] = [self.cache.get((q, topk)) for q in queries]
        self.stats.cache_hits += sum(r is not None for r in results)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            to_search = [queries[i] for i in missing]
            computed = await self._compute(to_search, topk)
            for i, hits in zip(missing, computed, strict=True):
                results[i] = hits
                self.cache.put((queries[i], topk), hits)
        return results

    async def _compute(self, queries: list[str], topk: int) -> list[Hits]:
        if self.micro_batching:
            if self._worker is None or self._worker.done():
                raise RuntimeError(
                    "the micro-batching worker is not running (SearchEngine.start() not called?)")
            future = asyncio.get_running_loop().create_future()
            await self._queue.put(_Job(queries, topk, future))
            return await future
        return await self._run_retriever(queries, topk)

    async def _run_retriever(self, queries: list[str], topk: int) -> list[Hits]:
        if self.dedupe:
            distinct, positions = unique_in_order(queries)
        else:
            distinct, positions = queries, list(range(len(queries)))
        loop = asyncio.get_running_loop()
        scores, rows = await loop.run_in_executor(self._executor, self.retriever.search, distinct, topk)
        self.stats.searched_queries += len(distinct)
        self.stats.batches += 1
        return [(scores[p], rows[p]) for p in positions]

    async def _gather_batch(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        size = len(jobs[0].queries)
        # Waiting for stragglers only pays when clients are concurrent (the last batch held several
        # requests); a lone sequential client would pay the wait, and on a busy machine the
        # timer's wake-up too, on every request.
        deadline = time.perf_counter() + (self.batch_wait_s if self._last_batch_requests > 1 else 0.0)
        while size < self.max_batch_queries:
            # Requests that queued while the previous batch computed join without waiting.
            if self._queue.empty():
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            else:
                job = self._queue.get_nowait()
            jobs.append(job)
            size += len(job.queries)
        self._last_batch_requests = len(jobs)
        return jobs

    async def _batch_loop(self) -> None:
        while True:
            jobs = await self._gather_batch()
            topk = max(job.topk for job in jobs)
            all_queries = [q for job in jobs for q in job.queries]
            try:
                hits = await self._run_retriever(all_queries, topk)
            except Exception as err:  # every waiting request gets the error, the loop keeps serving
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            start = 0
            for job in jobs:
                mine = hits[start:start + len(job.queries)]
                start += len(job.queries)
                if not job.future.done():
                    job.future.set_result([(s[:job.topk], r[:job.topk]) for s, r in mine])
