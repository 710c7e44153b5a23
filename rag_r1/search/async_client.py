"""RetrievalClient's contract for asyncio callers: many requests in flight over one connection pool.

    async with AsyncRetrievalClient(["http://10.0.0.1:8000/retrieve"], max_requests=64) as client:
        hits = await client.retrieve(["who wrote hamlet"], topk=3)

The per-trajectory rollout (rag_r1.llm_agent.async_agent) sends one request per searching turn of
each trajectory, while other trajectories generate. Replicas, retries, errors and the hits are
client.py's (the same helpers); `max_requests` caps the requests in flight (None: no cap). The
client belongs to the event loop it first ran on.
"""
from __future__ import annotations

import asyncio
import itertools

import httpx

from rag_r1.search.client import attempts, read_answer, read_hits, request_payload, retrieve_urls, unanswered


class AsyncRetrievalClient:
    def __init__(self, urls: str | list[str], timeout: float = 30.0, retries: int = 3, backoff: float = 0.5,
                 max_requests: int | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):  # tests put an httpx.MockTransport here
        if max_requests is not None and max_requests < 1:
            raise ValueError(f"max_requests must be >= 1 or None, got {max_requests}")
        self.urls = retrieve_urls(urls, retries)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        # no pool limit below the request cap: a request waiting for a connection would time out
        limits = httpx.Limits(max_connections=max_requests, max_keepalive_connections=max_requests)
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, limits=limits)
        self._slots = asyncio.Semaphore(max_requests) if max_requests else None
        self._next = itertools.count()

    async def retrieve(self, queries: list[str], topk: int, return_scores: bool = True) -> list[list[dict]]:
        """One list of hits per query, best first (RetrievalClient.retrieve)."""
        queries = list(queries)
        if not queries:
            return []
        payload = request_payload(queries, topk, return_scores)
        if self._slots is None:
            return read_hits(await self._request("POST", "retrieve", payload), queries, return_scores)
        async with self._slots:
            return read_hits(await self._request("POST", "retrieve", payload), queries, return_scores)

    async def health(self) -> dict:
        return await self._request("GET", "health")

    async def _request(self, method: str, endpoint: str, payload: dict | None = None) -> dict:
        start = next(self._next) % len(self.urls)
        order = self.urls[start:] + self.urls[:start]
        failures: list[str] = []
        for wait, url in attempts(order, endpoint, self.retries, self.backoff):
            if wait:
                await asyncio.sleep(wait)
            try:
                response = await self._http.request(method, url, json=payload)
            except httpx.HTTPError as err:
                failures.append(f"{url}: {type(err).__name__}: {err}")
                continue
            answer = read_answer(url, response, failures)
            if answer is not None:
                return answer
        raise unanswered(order, self.retries, self.timeout, failures)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRetrievalClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
