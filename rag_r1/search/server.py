"""The HTTP retrieval service: Search-R1's contract on FastAPI.

    POST /retrieve  {"queries": [str, ...], "topk": int = config.topk, "return_scores": bool = false}
      -> {"result": [[{"document": {"id", "contents"}, "score": float}, ...], ...]}  (return_scores)
      -> {"result": [[{"id", "contents"}, ...], ...]}                               (otherwise)
    GET /health     -> {"status": "ok", "retriever": str, "num_passages": int}

Every bad request gets a 4xx JSON body `{"error": "<what is wrong>"}` and the server keeps serving.
"""
from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rag_r1.search.config import ServerConfig
from rag_r1.search.corpus import Corpus
from rag_r1.search.engine import SearchEngine

log = logging.getLogger(__name__)


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it passes `max_bytes` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BadRequest(413, f"request body of {declared} bytes exceeds the limit of {max_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > max_bytes:
            raise BadRequest(413, f"request body exceeds the limit of {max_bytes} bytes")
    return bytes(body)


def parse_request(body: bytes, config: ServerConfig) -> tuple[list[str], int, bool]:
    """(queries, topk, return_scores) from a /retrieve body, or BadRequest saying what is wrong."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(400, f"request body is not valid JSON: {err}") from err
    if not isinstance(payload, dict):
        raise BadRequest(400, f"request body must be a JSON object, got {type(payload).__name__}")

    if "queries" not in payload:
        raise BadRequest(422, "'queries' is required: a list of query strings")
    queries = payload["queries"]
    if not isinstance(queries, list):
        raise BadRequest(422, f"'queries' must be a list of strings, got {type(queries).__name__}")
    if not queries:
        raise BadRequest(422, "'queries' is empty: send at least one query")
    if len(queries) > config.max_queries:
        raise BadRequest(422, f"too many queries: {len(queries)} > max_queries {config.max_queries}")
    for i, query in enumerate(queries):
        if not isinstance(query, str):
            raise BadRequest(422, f"queries[{i}] must be a string, got {type(query).__name__}")
        if not query.strip():
            raise BadRequest(422, f"queries[{i}] is empty")
        if len(query) > config.max_query_chars:
            raise BadRequest(
                422, f"queries[{i}] has {len(query)} characters > max_query_chars {config.max_query_chars}")

    topk = payload.get("topk")
    if topk is None:
        topk = config.topk
    if not isinstance(topk, int) or isinstance(topk, bool):
        raise BadRequest(422, f"'topk' must be an integer, got {json.dumps(topk)}")
    if not 1 <= topk <= config.max_topk:
        raise BadRequest(422, f"'topk' must be in 1..{config.max_topk}, got {topk}")

    return_scores = payload.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise BadRequest(422, f"'return_scores' must be true or false, got {json.dumps(return_scores)}")
    return queries, topk, return_scores


def format_result(corpus: Corpus, hits, return_scores: bool) -> list[list[dict]]:
    """Search-R1's result lists; rows of -1 (no hit) are left out."""
    result = []
    for scores, rows in hits:
        docs = []
        for score, row in zip(scores.tolist(), rows.tolist(), strict=True):
            if row < 0:
                continue
            document = corpus[row]
            docs.append({"document": document, "score": score} if return_scores else document)
        result.append(docs)
    return result


def create_app(config: ServerConfig, engine: SearchEngine, corpus: Corpus) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        yield
        await engine.stop()

    app = FastAPI(title="RAG-R1 retrieval", lifespan=lifespan)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, err: BadRequest) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.post("/retrieve")
    async def retrieve(request: Request) -> JSONResponse:
        body = await read_body(request, config.max_body_bytes)
        queries, topk, return_scores = parse_request(body, config)
        try:
            hits = await engine.search(queries, topk)
        except Exception as err:
            log.exception("search failed for %d queries", len(queries))
            return JSONResponse({"error": f"search failed: {type(err).__name__}: {err}"}, status_code=500)
        return JSONResponse({"result": format_result(corpus, hits, return_scores)})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "retriever": engine.retriever.name, "num_passages": len(corpus)}

    @app.get("/stats")
    async def stats() -> dict:
        return vars(engine.stats) | {"cache_entries": len(engine.cache)}

    return app
