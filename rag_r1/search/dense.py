"""Dense retrieval: a FAISS inner-product index over encoder vectors of the corpus rows.

Row i of the index is row i of the corpus file; start-up refuses an index whose size differs.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import faiss
import numpy as np

from rag_r1.search.retriever import pad_hits
from rag_r1.search.text_encoder import TextEncoder

log = logging.getLogger(__name__)

# MMAP_IFC maps Flat, PQ and SQ codes, HNSW's stored vectors and IVF inverted lists alike (loads in
# milliseconds whatever the size). Adding IO_FLAG_MMAP breaks IVF loads ("mmap only supported for
# File objects": the two flags pick different readers), so it is left out.
MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC


def load_index(path: str | Path, mmap: bool = True) -> faiss.Index:
    """Read a FAISS index, memory-mapped when `mmap` and the index type allows; logs the load time."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FAISS index file not found: {path}")
    start = time.perf_counter()
    index = faiss.read_index(str(path), MMAP_FLAGS if mmap else 0)
    log.info(
        "loaded FAISS index %s (%s, %d vectors, dim %d, %.1f GB on disk, mmap=%s) in %.2fs",
        path, type(index).__name__, index.ntotal, index.d, path.stat().st_size / 1e9, mmap,
        time.perf_counter() - start,
    )
    return index


def set_search_params(index: faiss.Index, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Search-time knobs that are stored in the index file (ignored by types without them)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and nprobe is not None:
        ivf.nprobe = nprobe
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None and ef_search is not None:
        hnsw.efSearch = ef_search


def shard_to_gpus(index: faiss.Index, fp16: bool = True) -> faiss.Index:
    """Split the index across every visible GPU (vectors in float16 when `fp16`), as the seed does.

    Needs faiss-gpu; untested on the CPU-only CI.
    """
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if n_gpus < 1:
        raise RuntimeError("--device cuda needs faiss-gpu and at least one visible GPU; found none")
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    options.useFloat16 = fp16
    start = time.perf_counter()
    gpu_index = faiss.index_cpu_to_all_gpus(index, co=options)
    log.info("sharded the index over %d GPUs (fp16=%s) in %.1fs", n_gpus, fp16, time.perf_counter() - start)
    return gpu_index


class DenseRetriever:
    """Encode queries with `encoder`, search `index` by inner product (cosine for unit vectors)."""

    name = "dense"

    def __init__(self, index: faiss.Index, encoder: TextEncoder):
        if index.d != encoder.dim:
            raise ValueError(
                f"index dimension {index.d} != encoder {encoder.model_name} dimension {encoder.dim}: "
                "the index was built with another encoder"
            )
        self.index = index
        self.encoder = encoder

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: list[str], topk: int) -> tuple[np.ndarray, np.ndarray]:
        vectors = self.encoder.encode_queries(queries)
        k = min(topk, self.size)
        scores, rows = self.index.search(vectors, k)
        return pad_hits(scores, rows, topk)
