"""Fixtures: the small corpus, its flat and BM25 indexes, and real servers on loopback."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The test modules import their helpers by plain name, under either pytest import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_testdata import LIMITS, ServerProcess, write_jsonl  # noqa: E402


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


@pytest.fixture(scope="session")
def limits_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "retrieval.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in LIMITS.items()))
    return path


@pytest.fixture(scope="session")
def flat_index(small_corpus, minilm_path, tmp_path_factory) -> Path:
    import faiss

    from rag_r1.search.corpus import iter_passages
    from rag_r1.search.encoder import Encoder

    vectors = Encoder(minilm_path).encode_passages([p["contents"] for p in iter_passages(small_corpus)])
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    path = tmp_path_factory.mktemp("dense") / "flat.faiss"
    faiss.write_index(index, str(path))
    return path


@pytest.fixture(scope="session")
def onnx_cache(minilm_path, tmp_path_factory) -> Path:
    """A folder holding MiniLM's ONNX export (made once for the session)."""
    from rag_r1.search.onnx_export import cached_onnx_export

    cache = tmp_path_factory.mktemp("onnx_cache")
    cached_onnx_export(minilm_path, cache)
    return cache


@pytest.fixture(scope="session")
def bm25_dir(small_corpus, tmp_path_factory) -> Path:
    from rag_r1.search.bm25 import build_bm25

    return build_bm25(small_corpus, tmp_path_factory.mktemp("bm25") / "index")


def serve(retriever: str, corpus, index, limits_yaml, logs):
    """A started retrieval server of one kind over the small corpus (stopped by the caller)."""
    return ServerProcess(["--config", str(limits_yaml), "--retriever", retriever, "--corpus", str(corpus),
                          "--index", str(index)], logs / f"{retriever}.log").start()


@pytest.fixture(scope="session")
def dense_server(small_corpus, flat_index, limits_yaml, tmp_path_factory):
    server = serve("dense", small_corpus, flat_index, limits_yaml, tmp_path_factory.mktemp("logs"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bm25_server(small_corpus, bm25_dir, limits_yaml, tmp_path_factory):
    server = serve("bm25", small_corpus, bm25_dir, limits_yaml, tmp_path_factory.mktemp("logs"))
    yield server
    server.stop()
