"""RetrievalClient: contract mapping, replicas, retries and errors (mock transport and a real server)."""
from __future__ import annotations

import threading
import time

import httpx
import pytest
from search_testdata import CONTENTS, free_port, server_answer

from rag_r1.search.client import RetrievalClient, RetrievalError


def fake_server(calls: list[str], down: set[str] = frozenset(), status_5xx: set[str] = frozenset()):
    """A transport answering like the server; hosts in `down` refuse connections, in `status_5xx` fail."""

    def handle(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        calls.append(f"{host}{request.url.path}")
        if host in down:
            raise httpx.ConnectError("connection refused", request=request)
        if host in status_5xx:
            return httpx.Response(503, json={"error": "overloaded"})
        return server_answer(request)

    return httpx.MockTransport(handle)


def test_retrieve_maps_the_contract_to_flat_hits():
    calls: list[str] = []
    client = RetrievalClient("http://a:8000/retrieve", transport=fake_server(calls))
    hits = client.retrieve(["q1", "q2"], topk=2)
    assert hits == [[{"id": "p6", "contents": CONTENTS["p6"], "score": 0.5}] * 2] * 2
    assert calls == ["a/retrieve"]  # one HTTP request for the whole batch
    plain = client.retrieve(["q1"], topk=1, return_scores=False)
    assert plain == [[{"id": "p6", "contents": CONTENTS["p6"]}]]


def test_no_queries_make_no_request():
    calls: list[str] = []
    assert RetrievalClient("http://a:8000", transport=fake_server(calls)).retrieve([], topk=3) == []
    assert calls == []


def test_requests_round_robin_over_replicas():
    calls: list[str] = []
    client = RetrievalClient(["http://a:8000", "http://b:8000/retrieve"], transport=fake_server(calls))
    for _ in range(4):
        client.retrieve(["q"], topk=1)
    assert calls == ["a/retrieve", "b/retrieve", "a/retrieve", "b/retrieve"]


def test_a_dead_replica_fails_over_without_sleeping():
    calls: list[str] = []
    client = RetrievalClient(["http://a:8000", "http://b:8000", "http://c:8000"], backoff=30.0,
                             transport=fake_server(calls, down={"a"}, status_5xx={"b"}))
    start = time.monotonic()
    assert client.retrieve(["q"], topk=1)[0][0]["id"] == "p6"
    assert calls == ["a/retrieve", "b/retrieve", "c/retrieve"]
    assert time.monotonic() - start < 5.0


def test_every_replica_down_raises_naming_each_url_after_the_retries():
    calls: list[str] = []
    client = RetrievalClient(["http://a:8000", "http://b:8000"], retries=2, backoff=0.01,
                             transport=fake_server(calls, down={"a", "b"}))
    with pytest.raises(RetrievalError) as err:
        client.retrieve(["q"], topk=1)
    assert len(calls) == 6  # (retries + 1) rounds x 2 replicas
    assert "http://a:8000/retrieve" in str(err.value) and "http://b:8000/retrieve" in str(err.value)
    assert "ConnectError" in str(err.value)


def test_backoff_doubles_between_rounds(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr("rag_r1.search.client.time.sleep", sleeps.append)
    client = RetrievalClient("http://a:8000", retries=3, backoff=0.5, transport=fake_server([], down={"a"}))
    with pytest.raises(RetrievalError):
        client.retrieve(["q"], topk=1)
    assert sleeps == [0.5, 1.0, 2.0]


def test_a_4xx_answer_is_raised_at_once_with_the_servers_message():
    calls: list[str] = []
    client = RetrievalClient(["http://a:8000", "http://b:8000"], transport=fake_server(calls))
    with pytest.raises(ValueError, match="HTTP 422.*'topk' must be in 1..100"):
        client.retrieve(["q"], topk=0)
    assert calls == ["a/retrieve"]


def test_health_uses_the_health_endpoint():
    calls: list[str] = []
    client = RetrievalClient("http://a:8000/retrieve", transport=fake_server(calls))
    assert client.health() == {"status": "ok", "host": "a"}
    assert calls == ["a/health"]


def test_real_server_down_gives_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/retrieve"
    client = RetrievalClient(url, timeout=2.0, retries=1, backoff=0.01)
    with pytest.raises(RetrievalError, match=f"retrieval server\\(s\\) {url} did not answer after 2 rounds"):
        client.retrieve(["q"], topk=1)


def test_client_retries_across_a_server_restart(bm25_server):
    client = RetrievalClient(f"{bm25_server.url}/retrieve", timeout=10.0, retries=6, backoff=0.5)
    assert client.retrieve(["Alexander Fleming"], topk=1)[0][0]["id"] == "p6"
    bm25_server.stop()
    with pytest.raises(RetrievalError):
        RetrievalClient(bm25_server.url, retries=0).retrieve(["q"], topk=1)
    restarter = threading.Timer(0.5, bm25_server.start)
    restarter.start()
    try:
        # rounds sleep 0.5, 1, 2, 4, 8, 16 s: the restarted server answers within them
        hits = client.retrieve(["Alexander Fleming", "coral reef"], topk=1)
    finally:
        restarter.join()
    assert [h[0]["id"] for h in hits] == ["p6", "p4"]
    assert client.health()["status"] == "ok"
