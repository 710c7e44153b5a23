"""Encoder on the pip-shipped MiniLM (offline)."""
from __future__ import annotations

import numpy as np
import pytest

from rag_r1.search.encoder import Encoder, default_minilm_path
from rag_r1.search.text_encoder import BGE_QUERY_INSTRUCTION, default_query_instruction


def test_default_minilm_path_is_the_shipped_model(minilm_path):
    assert default_minilm_path() == minilm_path
    assert (default_minilm_path() / "modules.json").is_file()


@pytest.mark.parametrize("model,instruction", [
    ("BAAI/bge-large-en-v1.5", BGE_QUERY_INSTRUCTION),
    ("/models/BGE-base", BGE_QUERY_INSTRUCTION),
    ("sentence-transformers/all-MiniLM-L6-v2", ""),
])
def test_default_query_instruction(model, instruction):
    assert default_query_instruction(model) == instruction


@pytest.mark.slow
def test_minilm_vectors_are_unit_float32_and_rank_the_match_first(minilm_path):
    encoder = Encoder(minilm_path, batch_size=2)
    assert encoder.dim == 384
    assert encoder.query_instruction == ""
    passages = ['"Penicillin"\nPenicillin was discovered by Alexander Fleming.',
                '"Apollo 11"\nApollo 11 landed on the Moon in 1969.',
                '"Paris"\nParis is the capital of France.']
    p = encoder.encode_passages(passages)
    q = encoder.encode_queries(["who discovered penicillin", "moon landing year"])
    assert p.shape == (3, 384) and q.shape == (2, 384)
    assert p.dtype == q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    assert (q @ p.T).argmax(axis=1).tolist() == [0, 1]
    assert encoder.encode_queries([]).shape == (0, 384)


@pytest.mark.slow
def test_instructions_are_prepended(minilm_path):
    plain = Encoder(minilm_path)
    prefixed = Encoder(minilm_path, query_instruction="query: ", passage_instruction="passage: ")
    np.testing.assert_allclose(prefixed.encode_queries(["cats"]), plain.encode_queries(["query: cats"]), atol=1e-6)
    np.testing.assert_allclose(prefixed.encode_passages(["cats"]), plain.encode_passages(["passage: cats"]), atol=1e-6)


@pytest.mark.cuda
def test_an_encoder_on_cuda_matches_cpu_and_retrieves_the_same_rows(tiny_encoder_dir):
    import faiss

    from rag_r1.search.dense import DenseRetriever

    passages = ['"Penicillin"\nPenicillin was discovered by Alexander Fleming.',
                '"Apollo 11"\nApollo 11 landed on the Moon in 1969.',
                '"Paris"\nParis is the capital of France.']
    cpu = Encoder(tiny_encoder_dir).encode_passages(passages)
    gpu = Encoder(tiny_encoder_dir, device="cuda")
    # fp32 on both, TF32 off for fp32 matmuls (PyTorch's default): only the summation order differs
    np.testing.assert_allclose(gpu.encode_passages(passages), cpu, atol=1e-4)
    # fp16 keeps 11 significant bits: unit vectors still point the same way
    half = Encoder(tiny_encoder_dir, device="cuda", fp16=True).encode_passages(passages)
    assert half.dtype == np.float32 and (half * cpu).sum(axis=1).min() > 0.999
    index = faiss.IndexFlatIP(cpu.shape[1])
    index.add(cpu)
    # each passage's own text, encoded on the GPU, finds its row first (a random encoder still does)
    _, rows = DenseRetriever(index, gpu).search(passages, topk=1)
    assert rows[:, 0].tolist() == [0, 1, 2]
