"""ServerConfig: YAML + overrides, every bad key named at start-up."""
from __future__ import annotations

import pytest

from rag_r1.search.config import ServerConfig, load_config

REQUIRED = {"corpus": "c.jsonl", "index": "i.faiss"}


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("retriever: bm25\ntopk: 5\ncache_size: 100\ncorpus: from_yaml.jsonl\nindex: dir\n")
    config = load_config(path, overrides={"topk": 2, "port": None, "corpus": "flag.jsonl"})
    assert (config.retriever, config.topk, config.cache_size, config.corpus, config.port) == (
        "bm25", 2, 100, "flag.jsonl", 8000)


@pytest.mark.parametrize("bad,message", [
    ({"retriever": "splade"}, "retriever: must be one of ('dense', 'bm25'), got 'splade'"),
    ({"corpus": None}, "corpus: a passage file"),
    ({"index": None}, "index: required for the dense retriever"),
    ({"device": "tpu"}, "device: must be one of"),
    ({"topk": 0}, "topk: must be >= 1, got 0"),
    ({"topk": "3"}, "topk: expected int, got '3'"),
    ({"micro_batching": "no"}, "micro_batching: expected bool, got 'no'"),
    ({"topk": 50, "max_topk": 10}, "topk: default 50 exceeds max_topk 10"),
    ({"port": 70000}, "port: must be in 1..65535, got 70000"),
    ({"batch_wait_ms": -1}, "batch_wait_ms: must be >= 0"),
    ({"cache_size": -5}, "cache_size: must be >= 0"),
    ({"cpu_threads": 0}, "cpu_threads: must be >= 1, got 0"),
    ({"log_level": "LOUD"}, "log_level: must be one of"),
    ({"hnsw_ef_search": "wide"}, "hnsw_ef_search: expected int | None"),
    ({"top_k": 3}, "unknown retrieval setting(s) ['top_k']"),
    ({"encoder_backend": "tensorrt"}, "encoder_backend: must be one of ('torch', 'onnx', 'onnx-int8')"),
    ({"encoder_backend": "onnx-int8", "device": "cuda"}, "encoder_backend: onnx-int8 runs on CPU only"),
])
def test_bad_settings_name_the_key(bad, message):
    with pytest.raises(ValueError) as err:
        load_config(overrides={**REQUIRED, **bad})
    assert message in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_float_setting_accepts_an_int():
    assert ServerConfig(**REQUIRED, batch_wait_ms=0).validate().batch_wait_ms == 0
