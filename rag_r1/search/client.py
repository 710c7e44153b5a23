"""Client of the retrieval server: one HTTP request per batch, retries, replicas.

    client = RetrievalClient(["http://10.0.0.1:8000/retrieve", "http://10.0.0.2:8000/retrieve"])
    hits = client.retrieve(["who wrote hamlet", "capital of peru"], topk=3)
    hits[0][0] == {"id": "...", "contents": "\"Hamlet\"\n...", "score": 0.71}

Requests go round-robin over the replicas; a replica that fails (connection error, timeout, 5xx)
is skipped for the next one. After every replica failed, the client waits `backoff * 2**round`
seconds and tries again, `retries` times, then raises RetrievalError naming every URL. A 4xx
answer is the caller's bug and is raised at once (ValueError with the server's message).
"""
from __future__ import annotations

import itertools
import threading
import time

import httpx


class RetrievalError(RuntimeError):
    """The retrieval server(s) could not answer."""


def _endpoints(url: str) -> tuple[str, str]:
    """(retrieve URL, health URL) from a base URL or a .../retrieve URL."""
    url = url.rstrip("/")
    base = url[: -len("/retrieve")] if url.endswith("/retrieve") else url
    return base + "/retrieve", base + "/health"


def retrieve_urls(urls: str | list[str], retries: int) -> list[str]:
    """The /retrieve URLs of the replicas (base URLs accepted), checked."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError("a retrieval client needs at least one server URL")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    return [_endpoints(u)[0] for u in urls]


def endpoint_url(retrieve_url: str, endpoint: str) -> str:
    return retrieve_url if endpoint == "retrieve" else _endpoints(retrieve_url)[1]


def retry_delay(backoff: float, round_no: int) -> float:
    """Seconds to wait before retry round `round_no` (1, 2, ...)."""
    return backoff * 2 ** (round_no - 1)


def attempts(order: list[str], endpoint: str, retries: int, backoff: float):
    """(seconds to wait first, URL) of every request a call may make: each replica in `order`, in
    `retries` + 1 rounds, a round after the first starting after its back-off."""
    for round_no in range(retries + 1):
        for i, retrieve_url in enumerate(order):
            yield (retry_delay(backoff, round_no) if round_no and i == 0 else 0.0), endpoint_url(retrieve_url, endpoint)


def request_payload(queries: list[str], topk: int, return_scores: bool) -> dict:
    return {"queries": queries, "topk": topk, "return_scores": return_scores}


def read_answer(url: str, response: httpx.Response, failures: list[str]) -> dict | None:
    """The JSON of a 2xx answer; None after noting a 5xx in `failures` (try the next replica); a
    4xx is the caller's bug and raises ValueError with the server's message."""
    if response.status_code >= 500:
        failures.append(f"{url}: HTTP {response.status_code} {response.text[:200]}")
        return None
    if response.status_code >= 400:
        raise ValueError(f"retrieval server {url} refused the request "
                         f"(HTTP {response.status_code}): {response.text[:500]}")
    return response.json()


def unanswered(order: list[str], retries: int, timeout: float, failures: list[str]) -> RetrievalError:
    return RetrievalError(
        f"retrieval server(s) {', '.join(order)} did not answer after {retries + 1} rounds "
        f"(timeout {timeout}s); last errors: {' | '.join(failures[-len(order):])}"
    )


def read_hits(answer: dict, queries: list[str], return_scores: bool) -> list[list[dict]]:
    """The hits of a /retrieve answer, one list per query (see RetrievalClient.retrieve)."""
    result = answer.get("result")
    if not isinstance(result, list) or len(result) != len(queries):
        answered = len(result) if isinstance(result, list) else repr(result)
        raise RetrievalError(f"retrieval server answered {answered} result lists for {len(queries)} queries")
    if not return_scores:
        return [[{"id": d["id"], "contents": d["contents"]} for d in hits] for hits in result]
    return [
        [{"id": h["document"]["id"], "contents": h["document"]["contents"], "score": float(h["score"])}
         for h in hits]
        for hits in result
    ]


class RetrievalClient:
    def __init__(
        self,
        urls: str | list[str],
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,  # tests put an httpx.MockTransport here
    ):
        self.urls = retrieve_urls(urls, retries)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._http = httpx.Client(timeout=timeout, transport=transport)
        self._next = itertools.count()
        self._lock = threading.Lock()

    def _replica_order(self) -> list[str]:
        with self._lock:
            start = next(self._next) % len(self.urls)
        return self.urls[start:] + self.urls[:start]

    def _request(self, method: str, endpoint: str, payload: dict | None = None) -> dict:
        order = self._replica_order()
        failures: list[str] = []
        for wait, url in attempts(order, endpoint, self.retries, self.backoff):
            if wait:
                time.sleep(wait)
            try:
                response = self._http.request(method, url, json=payload)
            except httpx.HTTPError as err:
                failures.append(f"{url}: {type(err).__name__}: {err}")
                continue
            answer = read_answer(url, response, failures)
            if answer is not None:
                return answer
        raise unanswered(order, self.retries, self.timeout, failures)

    def retrieve(self, queries: list[str], topk: int, return_scores: bool = True) -> list[list[dict]]:
        """One list of hits per query, best first: `{"id", "contents", "score"}` (no score when
        `return_scores` is false)."""
        queries = list(queries)
        if not queries:
            return []
        return read_hits(self._request("POST", "retrieve", request_payload(queries, topk, return_scores)),
                         queries, return_scores)

    def health(self) -> dict:
        """The /health answer of the next replica (with the same retries and failover)."""
        return self._request("GET", "health")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RetrievalClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
