"""Dense retrieval: memory-mapped index loading and FAISS search behind a stand-in encoder."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from rag_r1.search.dense import DenseRetriever, load_index, shard_to_gpus


class AxisEncoder:
    """Query "axis k" encodes to the k-th unit vector: the right answer is known exactly."""

    model_name = "axis"
    dim = 4

    def encode_queries(self, queries):
        vectors = np.zeros((len(queries), self.dim), dtype=np.float32)
        for i, q in enumerate(queries):
            vectors[i, int(q.split()[-1])] = 1.0
        return vectors


# passage row r points mostly along axis r, a little along the next one
VECTORS = np.array([[0.9, 0.1, 0, 0], [0, 0.9, 0.1, 0], [0, 0, 0.9, 0.1]], dtype=np.float32)


def write_index(path, factory="Flat"):
    index = faiss.index_factory(VECTORS.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    index.add(VECTORS)
    faiss.write_index(index, str(path))
    return path


@pytest.mark.parametrize("factory", ["Flat", "HNSW8"])
def test_mmap_load_searches_like_an_in_memory_load(tmp_path, factory):
    path = write_index(tmp_path / "i.faiss", factory)
    mapped, in_ram = load_index(path, mmap=True), load_index(path, mmap=False)
    assert mapped.ntotal == in_ram.ntotal == 3
    np.testing.assert_array_equal(mapped.search(VECTORS, 2)[1], in_ram.search(VECTORS, 2)[1])


@pytest.mark.parametrize("factory", ["IVF4,Flat", "IVF4,PQ4x4", "PQ4x4"])
def test_mmap_load_of_ivf_and_pq_searches_like_an_in_memory_load(tmp_path, factory):
    # IVF indexes failed to load when IO_FLAG_MMAP was asked for together with IO_FLAG_MMAP_IFC.
    vectors = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
    index = faiss.index_factory(8, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    faiss.write_index(index, str(tmp_path / "i.faiss"))
    mapped, in_ram = load_index(tmp_path / "i.faiss", mmap=True), load_index(tmp_path / "i.faiss", mmap=False)
    np.testing.assert_array_equal(mapped.search(vectors[:20], 5)[1], in_ram.search(vectors[:20], 5)[1])


def test_missing_index_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="FAISS index file not found: .*none.faiss"):
        load_index(tmp_path / "none.faiss")


def test_search_returns_exact_inner_products_best_first(tmp_path):
    retriever = DenseRetriever(load_index(write_index(tmp_path / "i.faiss")), AxisEncoder())
    scores, rows = retriever.search(["axis 1", "axis 2"], topk=2)
    assert rows.tolist() == [[1, 0], [2, 1]]
    # axis-1 query . row 1 = 0.9, . row 0 = 0.1; axis-2 query . row 2 = 0.9, . row 1 = 0.1
    np.testing.assert_allclose(scores, [[0.9, 0.1], [0.9, 0.1]], atol=1e-6)
    assert scores.dtype == np.float32 and rows.dtype == np.int64


def test_topk_beyond_the_index_pads_with_no_hit_rows(tmp_path):
    retriever = DenseRetriever(load_index(write_index(tmp_path / "i.faiss")), AxisEncoder())
    scores, rows = retriever.search(["axis 0"], topk=5)
    assert rows.shape == (1, 5)
    assert rows[0, 3:].tolist() == [-1, -1]
    assert np.isneginf(scores[0, 3:]).all()


def test_encoder_index_dimension_mismatch_is_refused():
    index = faiss.IndexFlatIP(8)
    with pytest.raises(ValueError, match="index dimension 8 != encoder axis dimension 4"):
        DenseRetriever(index, AxisEncoder())


def test_gpu_sharding_without_gpus_is_a_clear_error():
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        pytest.skip("faiss sees a GPU here; this test checks the error raised where it sees none")
    with pytest.raises(RuntimeError, match="--device cuda needs faiss-gpu"):
        shard_to_gpus(faiss.IndexFlatIP(4))
