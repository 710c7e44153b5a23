"""Where the corpus embeddings live on disk, shared by the embedding, index and benchmark scripts.

An embedding directory holds:
- `meta.json`: corpus path, passage count, shard count, model, instructions, dim, dtype;
- `shard_XX.npy`: float16 [rows of shard XX, dim], normalized vectors, in corpus order;
- `shard_XX.chunks/NNNNNN.npy` while shard XX is being embedded (partial progress, removed once
  the shard file is written).

Shard i covers corpus rows [i*N//S, (i+1)*N//S), so concatenating the shards in order gives the
corpus order, and row r of the merged index is passage r of the corpus.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

META_NAME = "meta.json"


def shard_bounds(num_rows: int, num_shards: int, shard_id: int) -> tuple[int, int]:
    """[start, end) corpus rows of one shard; shards differ in size by at most one row."""
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard id {shard_id} is outside 0..{num_shards - 1}")
    return shard_id * num_rows // num_shards, (shard_id + 1) * num_rows // num_shards


def shard_path(embedding_dir: Path, shard_id: int) -> Path:
    return Path(embedding_dir) / f"shard_{shard_id:02d}.npy"


def chunk_dir(embedding_dir: Path, shard_id: int) -> Path:
    return Path(embedding_dir) / f"shard_{shard_id:02d}.chunks"


def chunk_path(embedding_dir: Path, shard_id: int, chunk_index: int) -> Path:
    return chunk_dir(embedding_dir, shard_id) / f"{chunk_index:06d}.npy"


def read_meta(embedding_dir: Path) -> dict:
    path = Path(embedding_dir) / META_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {embedding_dir} an embedding directory "
                                "made by build_corpus_embedding?")
    return json.loads(path.read_text())


def write_meta(embedding_dir: Path, meta: dict) -> None:
    # Shard processes may start together: each writes its own temp file and renames it.
    path = Path(embedding_dir, META_NAME)
    tmp = path.with_name(f"{META_NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, path)


def open_shard(embedding_dir: Path, shard_id: int) -> np.ndarray:
    """One finished shard, float16, memory-mapped (nothing is read until rows are used)."""
    path = shard_path(embedding_dir, shard_id)
    if not path.is_file():
        raise FileNotFoundError(f"embedding shard {path} is missing: run build_corpus_embedding "
                                f"--shard-id {shard_id} first")
    return np.load(path, mmap_mode="r")


def load_shard(embedding_dir: Path, shard_id: int) -> np.ndarray:
    """One finished shard as float32 (what FAISS takes)."""
    return open_shard(embedding_dir, shard_id).astype(np.float32)


def load_all(embedding_dir: Path) -> np.ndarray:
    """All shards concatenated in corpus order, float32 [N, dim]."""
    meta = read_meta(embedding_dir)
    vectors = np.concatenate([load_shard(embedding_dir, i) for i in range(meta["num_shards"])])
    if len(vectors) != meta["num_passages"]:
        raise ValueError(f"{embedding_dir}: shards hold {len(vectors)} rows but meta.json says "
                         f"{meta['num_passages']} passages")
    return vectors


def iter_shard_blocks(embedding_dir: Path, shard_id: int, block_rows: int = 65536):
    """A shard's vectors as float32 blocks of at most `block_rows` rows (bounded memory)."""
    vectors = open_shard(embedding_dir, shard_id)
    for start in range(0, len(vectors), block_rows):
        yield np.ascontiguousarray(vectors[start:start + block_rows], dtype=np.float32)


def write_vectors_file(embedding_dir: Path, path: Path, block_rows: int = 65536) -> Path:
    """Every shard, in corpus order, into one float16 .npy at `path`: the full vectors a re-ranking
    server memory-maps (rag_r1.search.rerank). Streamed block by block (bounded memory) into a
    temporary file that is renamed when complete."""
    meta = read_meta(embedding_dir)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(meta["num_passages"], meta["dim"]))
    row = 0
    for shard_id in range(meta["num_shards"]):
        shard = open_shard(embedding_dir, shard_id)
        for start in range(0, len(shard), block_rows):
            block = shard[start:start + block_rows]
            out[row:row + len(block)] = block
            row += len(block)
    if row != meta["num_passages"]:
        raise ValueError(f"{embedding_dir}: shards hold {row} rows but meta.json says {meta['num_passages']}")
    out.flush()
    del out
    os.replace(tmp, path)
    return path


def sample_rows(embedding_dir: Path, size: int, seed: int = 0) -> np.ndarray:
    """`size` distinct corpus rows drawn uniformly from all shards, float32, in row order."""
    meta = read_meta(embedding_dir)
    total = meta["num_passages"]
    rows = np.sort(np.random.default_rng(seed).choice(total, size=min(size, total), replace=False))
    parts = []
    for shard_id in range(meta["num_shards"]):
        start, end = shard_bounds(total, meta["num_shards"], shard_id)
        local = rows[(rows >= start) & (rows < end)] - start
        if len(local):
            parts.append(open_shard(embedding_dir, shard_id)[local])
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, meta["dim"]), np.float32)


def iter_row_blocks(embedding_dir: Path, block_rows: int = 65536):
    """All vectors in corpus order as float32 blocks of exactly `block_rows` rows (the last may be
    shorter), whatever the sharding: an index built from these blocks does not depend on the shard
    count (HNSW's graph depends on how rows are batched)."""
    meta = read_meta(embedding_dir)
    pending, pending_rows = [], 0
    for shard_id in range(meta["num_shards"]):
        vectors = open_shard(embedding_dir, shard_id)
        start = 0
        while start < len(vectors):
            take = min(block_rows - pending_rows, len(vectors) - start)
            pending.append(vectors[start:start + take])
            pending_rows += take
            start += take
            if pending_rows == block_rows:
                yield np.concatenate(pending).astype(np.float32)
                pending, pending_rows = [], 0
    if pending:
        yield np.concatenate(pending).astype(np.float32)


def load_embedded_prefix(embedding_dir: Path) -> np.ndarray:
    """The longest run of embedded rows from row 0, float32: finished shards in order, then the
    finished chunks of the first unfinished shard. Lets a benchmark use a run still in progress."""
    meta = read_meta(embedding_dir)
    parts = []
    for shard_id in range(meta["num_shards"]):
        if shard_path(embedding_dir, shard_id).is_file():
            parts.append(open_shard(embedding_dir, shard_id))
            continue
        chunk_index = 0
        while chunk_path(embedding_dir, shard_id, chunk_index).is_file():
            parts.append(np.load(chunk_path(embedding_dir, shard_id, chunk_index)))
            chunk_index += 1
        break
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, meta["dim"]), np.float32)
