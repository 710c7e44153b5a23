"""AsyncRetrievalClient: RetrievalClient's contract for asyncio callers (mock transport), with its
requests in flight at once up to `max_requests`."""
from __future__ import annotations

import asyncio

import httpx
import pytest
from search_testdata import CONTENTS, server_answer

from rag_r1.search.async_client import AsyncRetrievalClient
from rag_r1.search.client import RetrievalError


class SlowServer:
    """An async transport answering like the server after `delay` seconds; hosts in `down` refuse
    connections, in `overloaded` answer 503. Records the requests and the most in flight at once."""

    def __init__(self, delay: float = 0.0, down=frozenset(), overloaded=frozenset()):
        self.delay, self.down, self.overloaded = delay, down, overloaded
        self.calls: list[str] = []
        self.in_flight = self.most_in_flight = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.calls.append(f"{host}{request.url.path}")
        if host in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if host in self.overloaded:
            return httpx.Response(503, json={"error": "overloaded"})
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(self.delay)
        self.in_flight -= 1
        return server_answer(request)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


def test_hits_and_errors_are_the_blocking_clients():
    server = SlowServer()

    async def calls():
        async with AsyncRetrievalClient("http://a:8000", transport=server.transport()) as client:
            hits = await client.retrieve(["q1", "q2"], topk=2)
            plain = await client.retrieve(["q1"], topk=1, return_scores=False)
            assert await client.retrieve([], topk=3) == []
            with pytest.raises(ValueError, match=r"refused the request \(HTTP 422\): .*'topk' must be in 1..100"):
                await client.retrieve(["q"], topk=0)
            return hits, plain

    hits, plain = asyncio.run(calls())
    assert hits == [[{"id": "p6", "contents": CONTENTS["p6"], "score": 0.5}] * 2] * 2
    assert plain == [[{"id": "p6", "contents": CONTENTS["p6"]}]]
    assert server.calls == ["a/retrieve"] * 3


def test_a_failing_replica_is_skipped_and_all_failing_is_raised_naming_them():
    server = SlowServer(down={"a"}, overloaded={"c"})

    async def calls():
        client = AsyncRetrievalClient(["http://a:8000", "http://b:8000"], transport=server.transport(), backoff=0)
        await client.retrieve(["q"], topk=1)
        broken = AsyncRetrievalClient(["http://a:8000", "http://c:8000"], retries=1, backoff=0,
                                      transport=server.transport())
        with pytest.raises(RetrievalError, match=r"http://a:8000/retrieve, http://c:8000/retrieve did not answer "
                                                 r"after 2 rounds .*c:8000/retrieve: HTTP 503"):
            await broken.retrieve(["q"], topk=1)

    asyncio.run(calls())
    assert server.calls == ["a/retrieve", "b/retrieve"] + ["a/retrieve", "c/retrieve"] * 2


@pytest.mark.parametrize("max_requests, most", [(None, 8), (3, 3)])
def test_requests_fly_at_once_up_to_max_requests(max_requests, most):
    server = SlowServer(delay=0.05)

    async def calls():
        client = AsyncRetrievalClient("http://a:8000", transport=server.transport(), max_requests=max_requests)
        return await asyncio.gather(*(client.retrieve([f"q{i}"], topk=1) for i in range(8)))

    assert len(asyncio.run(calls())) == 8
    assert server.most_in_flight == most
