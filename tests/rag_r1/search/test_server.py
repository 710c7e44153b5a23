"""The retrieval server over real HTTP on loopback (start_retrieval.py in a subprocess)."""
from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from search_testdata import (
    CONTENTS,
    KNOWN_ANSWERS,
    LIMITS,
    PASSAGES,
    ROOT,
    ServerProcess,
    write_jsonl,
)


def post(server, payload=None, content: bytes | None = None, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/retrieve", json=payload, content=content, timeout=60, **kwargs)


@pytest.mark.slow
def test_dense_contract_with_scores_is_search_r1s(dense_server):
    queries = [KNOWN_ANSWERS[0][0], KNOWN_ANSWERS[1][0]]
    body = post(dense_server, {"queries": queries, "topk": 3, "return_scores": True}).json()
    assert list(body) == ["result"]
    assert len(body["result"]) == 2
    for hits, (_, expected_id) in zip(body["result"], KNOWN_ANSWERS[:2]):
        assert len(hits) == 3
        for hit in hits:
            assert set(hit) == {"document", "score"}
            assert set(hit["document"]) == {"id", "contents"}
            assert isinstance(hit["score"], float)
            assert hit["document"]["contents"] == CONTENTS[hit["document"]["id"]]
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert hits[0]["document"]["id"] == expected_id
        # unit vectors: cosine similarity
        assert -1.0 <= scores[-1] <= scores[0] <= 1.0


@pytest.mark.slow
def test_dense_contract_without_scores_is_plain_documents(dense_server):
    body = post(dense_server, {"queries": [KNOWN_ANSWERS[2][0]], "topk": 2}).json()
    assert list(body) == ["result"]
    hits = body["result"][0]
    assert len(hits) == 2
    assert all(set(h) == {"id", "contents"} for h in hits)
    assert hits[0] == {"id": "p7", "contents": CONTENTS["p7"]}


@pytest.fixture(scope="module")
def onnx_int8_server(small_corpus, flat_index, onnx_cache, tmp_path_factory):
    server = ServerProcess(["--retriever", "dense", "--corpus", small_corpus, "--index", flat_index,
                            "--encoder-backend", "onnx-int8", "--encoder-cache", onnx_cache],
                           tmp_path_factory.mktemp("logs") / "onnx.log").start()
    yield server
    server.stop()


@pytest.mark.slow
def test_onnx_int8_server_reuses_the_export_and_ranks_the_right_passage_first(onnx_int8_server):
    log = onnx_int8_server.log()
    assert "ONNX encoder export found" in log and "exporting encoder" not in log
    assert "encoder_backend=onnx-int8" in log
    body = post(onnx_int8_server, {"queries": [query for query, _ in KNOWN_ANSWERS], "topk": 1}).json()
    assert [hits[0]["id"] for hits in body["result"]] == [pid for _, pid in KNOWN_ANSWERS]


@pytest.fixture(scope="module")
def reranking_server(small_corpus, flat_index, onnx_cache, tmp_path_factory):
    """A 2-bit PQ index (8 bytes a vector, scores far off) re-ranking every passage exactly."""
    import faiss

    work = tmp_path_factory.mktemp("rerank")
    vectors = faiss.read_index(str(flat_index)).reconstruct_n(0, len(PASSAGES))
    np.save(work / "full.npy", vectors.astype(np.float16))
    pq = faiss.index_factory(vectors.shape[1], "PQ32x2", faiss.METRIC_INNER_PRODUCT)
    pq.train(vectors)
    pq.add(vectors)
    faiss.write_index(pq, str(work / "pq.faiss"))
    server = ServerProcess(["--retriever", "dense", "--corpus", small_corpus, "--index", work / "pq.faiss",
                            "--encoder-backend", "onnx", "--encoder-cache", onnx_cache,
                            "--rerank-vectors", work / "full.npy", "--rerank-depth", len(PASSAGES)],
                           work / "server.log").start()
    yield server
    server.stop()


@pytest.mark.slow
def test_reranking_server_answers_like_the_flat_one(reranking_server, dense_server):
    queries = [query for query, _ in KNOWN_ANSWERS]
    payload = {"queries": queries, "topk": 4, "return_scores": True}
    reranked, flat = post(reranking_server, payload).json()["result"], post(dense_server, payload).json()["result"]
    for got, want in zip(reranked, flat, strict=True):
        assert [hit["document"]["id"] for hit in got] == [hit["document"]["id"] for hit in want]
        # full vectors are stored in fp16: scores agree to ~1e-3
        np.testing.assert_allclose([hit["score"] for hit in got], [hit["score"] for hit in want], atol=2e-3)


@pytest.mark.slow
@pytest.mark.parametrize("query,expected_id", KNOWN_ANSWERS)
def test_dense_ranks_the_right_passage_first(dense_server, query, expected_id):
    hits = post(dense_server, {"queries": [query], "topk": 1}).json()["result"][0]
    assert [h["id"] for h in hits] == [expected_id]


@pytest.mark.slow
def test_concurrent_requests_share_batches(dense_server):
    before = httpx.get(f"{dense_server.url}/stats").json()
    queries = [q for q, _ in KNOWN_ANSWERS] * 4  # 16 requests, each query 4 times
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda q: post(dense_server, {"queries": [q], "topk": 1}).json(), queries))
    after = httpx.get(f"{dense_server.url}/stats").json()
    expected = dict(KNOWN_ANSWERS)
    assert [a["result"][0][0]["id"] for a in answers] == [expected[q] for q in queries]
    assert after["requests"] - before["requests"] == 16
    # 16 requests cannot all have arrived one per batch while encodes were running
    assert after["batches"] - before["batches"] < 16
    assert after["searched_queries"] - before["searched_queries"] < 16


@pytest.mark.parametrize("query,expected_id", [
    ("Alexander Fleming antibiotic", "p6"),
    ("coral reef Queensland", "p4"),
    ("Guido van Rossum programming language", "p3"),
])
def test_bm25_ranks_the_right_passage_first(bm25_server, query, expected_id):
    hits = post(bm25_server, {"queries": [query], "topk": 3, "return_scores": True}).json()["result"][0]
    assert hits[0]["document"]["id"] == expected_id
    assert hits[0]["score"] > 0


def test_bm25_leaves_out_passages_without_a_shared_term(bm25_server):
    hits = post(bm25_server, {"queries": ["Beethoven symphonies"], "topk": 5}).json()["result"][0]
    assert [h["id"] for h in hits] == ["p5"]


def test_topk_defaults_to_the_configured_value(bm25_server):
    # the query shares terms with 4 passages, so only the default topk (3) limits the answer
    hits = post(bm25_server, {"queries": ["Eiffel Tower Paris volcano Tanzania Moon Fleming"]}).json()["result"][0]
    assert len(hits) == 3
    assert hits[0]["id"] == "p0"


def test_health(bm25_server):
    response = httpx.get(f"{bm25_server.url}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "retriever": "bm25", "num_passages": len(PASSAGES)}


def test_ready_line_is_printed_once(bm25_server):
    lines = [line for line in bm25_server.log().splitlines() if "RETRIEVAL READY" in line]
    assert len(lines) == 1
    assert f"http://127.0.0.1:{bm25_server.port} retriever=bm25 passages={len(PASSAGES)}" in lines[0]


def chunks(data: bytes, size: int = 1000):
    for i in range(0, len(data), size):
        yield data[i:i + size]


BAD_REQUESTS = [
    # (id, kwargs for post, status, words of the error)
    ("malformed-json", {"content": b'{"queries": ["a"'}, 400, "not valid JSON"),
    ("not-an-object", {"payload": ["a", "b"]}, 400, "JSON object"),
    ("missing-queries", {"payload": {"topk": 3}}, 422, "'queries' is required"),
    ("queries-not-list", {"payload": {"queries": "who wrote hamlet"}}, 422, "must be a list"),
    ("empty-queries", {"payload": {"queries": []}}, 422, "is empty"),
    ("non-string-item", {"payload": {"queries": ["ok", 7]}}, 422, "queries[1] must be a string"),
    ("null-item", {"payload": {"queries": [None]}}, 422, "queries[0] must be a string"),
    ("empty-string", {"payload": {"queries": ["fine", "  "]}}, 422, "queries[1] is empty"),
    ("huge-string", {"payload": {"queries": ["x" * (LIMITS["max_query_chars"] + 1)]}}, 422, "max_query_chars"),
    ("too-many-queries", {"payload": {"queries": ["q"] * (LIMITS["max_queries"] + 1)}}, 422, "too many queries"),
    ("topk-zero", {"payload": {"queries": ["q"], "topk": 0}}, 422, "'topk' must be in 1..5"),
    ("topk-negative", {"payload": {"queries": ["q"], "topk": -2}}, 422, "'topk' must be in 1..5"),
    ("topk-above-max", {"payload": {"queries": ["q"], "topk": LIMITS["max_topk"] + 1}}, 422, "'topk' must be in"),
    ("topk-string", {"payload": {"queries": ["q"], "topk": "3"}}, 422, "'topk' must be an integer"),
    ("topk-float", {"payload": {"queries": ["q"], "topk": 2.5}}, 422, "'topk' must be an integer"),
    ("return-scores-string", {"payload": {"queries": ["q"], "return_scores": "yes"}}, 422, "'return_scores'"),
    ("oversized-body", {"content": b'{"queries": ["' + b"x" * 5000 + b'"]}'}, 413, "exceeds the limit"),
    ("oversized-chunked-body", {"content": chunks(b'{"queries": ["' + b"x" * 5000 + b'"]}')}, 413, "exceeds"),
    ("not-utf8", {"content": b'{"queries": ["\xff\xfe"]}'}, 400, "not valid JSON"),
]


@pytest.mark.parametrize("kwargs,status,words", [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_4xx_json_and_the_server_keeps_serving(bm25_server, kwargs, status, words):
    response = post(bm25_server, **kwargs)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    ok = post(bm25_server, {"queries": ["Alexander Fleming"], "topk": 1})
    assert ok.status_code == 200
    assert ok.json()["result"][0][0]["id"] == "p6"


def run_start(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "start_retrieval.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_startup_fails_naming_a_missing_corpus(tmp_path, bm25_dir):
    missing = tmp_path / "nope.jsonl"
    done = run_start(["--retriever", "bm25", "--corpus", str(missing), "--index", str(bm25_dir)])
    assert done.returncode != 0
    assert f"corpus file not found: {missing}" in done.stderr


def test_startup_fails_naming_a_missing_index(tmp_path, small_corpus):
    missing = tmp_path / "none.faiss"
    done = run_start(["--retriever", "dense", "--corpus", str(small_corpus), "--index", str(missing)])
    assert done.returncode != 0
    assert f"FAISS index file not found: {missing}" in done.stderr


def test_startup_fails_on_corpus_index_size_mismatch(tmp_path, bm25_dir):
    shorter = write_jsonl(tmp_path / "short.jsonl", PASSAGES[:-1])
    done = run_start(["--retriever", "bm25", "--corpus", str(shorter), "--index", str(bm25_dir)])
    assert done.returncode != 0
    assert f"has {len(PASSAGES) - 1} passages but the bm25 index {bm25_dir} holds {len(PASSAGES)}" in done.stderr


def test_startup_fails_naming_an_unknown_config_key(tmp_path, small_corpus, bm25_dir):
    config = tmp_path / "bad.yaml"
    config.write_text("topk: 3\ntop_k: 5\n")
    done = run_start(["--config", str(config), "--retriever", "bm25", "--corpus", str(small_corpus),
                      "--index", str(bm25_dir)])
    assert done.returncode != 0
    assert "unknown retrieval setting(s) ['top_k']" in done.stderr


def test_a_tsv_corpus_serves_the_same_passages(tmp_path):
    from rag_r1.search.bm25 import build_bm25

    tsv = tmp_path / "corpus.tsv"
    # the seed's one-line form: no newline inside contents
    tsv.write_text("id\tcontents\n" + "".join(f"{pid}\t{title}: {text}\n" for pid, title, text in PASSAGES))
    index = build_bm25(tsv, tmp_path / "bm25")
    server = ServerProcess(["--retriever", "bm25", "--corpus", str(tsv), "--index", str(index)],
                           tmp_path / "tsv.log").start()
    try:
        hits = post(server, {"queries": ["Alexander Fleming antibiotic"], "topk": 1}).json()["result"][0]
    finally:
        server.stop()
    assert hits == [{"id": "p6", "contents": "Penicillin: " + PASSAGES[6][2]}]


def test_a_failing_search_is_a_500_json_error_and_the_app_keeps_serving(small_corpus):
    from fastapi.testclient import TestClient

    from rag_r1.search.config import ServerConfig
    from rag_r1.search.corpus import load_corpus
    from rag_r1.search.engine import SearchEngine
    from rag_r1.search.server import create_app

    class FlakyRetriever:
        name = "flaky"
        size = len(PASSAGES)

        def search(self, queries, topk):
            if "explode" in queries:
                raise RuntimeError("index on fire")
            return np.zeros((len(queries), topk), np.float32), np.tile(np.arange(topk), (len(queries), 1))

    config = ServerConfig(corpus=str(small_corpus), index="unused").validate()
    app = create_app(config, SearchEngine(FlakyRetriever()), load_corpus(small_corpus, show_progress=False))
    with TestClient(app) as client:
        failed = client.post("/retrieve", json={"queries": ["explode"]})
        assert failed.status_code == 500
        assert failed.json() == {"error": "search failed: RuntimeError: index on fire"}
        ok = client.post("/retrieve", json={"queries": ["fine"], "topk": 2})
        assert ok.json() == {"result": [[{"id": "p0", "contents": CONTENTS["p0"]},
                                         {"id": "p1", "contents": CONTENTS["p1"]}]]}
