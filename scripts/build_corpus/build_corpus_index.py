"""Build one FAISS index per embedding shard, merge them into one index, report size and recall.

    python -m scripts.build_corpus.build_corpus_index --embeddings .cache/emb/bge \
        --out .cache/index/bge_Flat.index [--factory Flat] [--corpus kilt_100w.jsonl]
    python -m scripts.build_corpus.build_corpus_index --embeddings .cache/emb/bge \
        --out .cache/index/bge_ivfpq.index --factory IVF4096,PQ64 --nprobe 64
    # merge index chunks made elsewhere (e.g. the seed release's), in corpus order
    python -m scripts.build_corpus.build_corpus_index --shard-indexes part_0.index part_1.index \
        --out merged.index

`--factory` is a FAISS factory string, always with inner product (the embeddings are normalized,
so this is cosine similarity): "Flat" (exact, default), "HNSW32", "IVF4096,PQ64", "IVF4096,SQ8", ...

How each family is sharded and merged:
- flat-code indexes (Flat, SQ8, PQ64): each shard is built alone, the merge appends the codes;
- IVF indexes: the coarse quantizer (and PQ/SQ codebooks) are trained ONCE on `--train-size` rows
  sampled from all shards, copied to every shard, and the merge moves inverted lists, shifting
  ids so row r of the index is passage r of the corpus;
- HNSW: a graph cannot be merged, so no per-shard index is built; the graph is built by adding
  all vectors in corpus order, in fixed blocks that do not depend on the shard count (with one
  FAISS thread the graph is then the same whatever the sharding; several threads insert in a
  nondeterministic order).

Shard indexes are written to `OUT.shards/` so a killed run keeps its finished shards; the folder
is removed after a successful merge unless `--keep-shard-indexes`.

Compressed index + exact re-rank (little RAM, Flat's ranking for the candidates it finds):

    python -m scripts.build_corpus.build_corpus_index --embeddings .cache/emb/bge \
        --out .cache/index/bge_ivfpq.index --factory IVF65536,PQ64 --nprobe 64 \
        --rerank-vectors .cache/index/bge_fp16.npy
    python start_retrieval.py --index .cache/index/bge_ivfpq.index \
        --rerank-vectors .cache/index/bge_fp16.npy [--rerank-depth 100] ...

`--rerank-vectors` also writes every embedding, in corpus order, as one float16 .npy; the server
memory-maps it and re-scores the compressed index's candidates exactly (rag_r1.search.rerank).

For approximate indexes the script prints recall@k against exact (flat) search: queries are
`--recall-queries` corpus vectors drawn at random, recall@1 is the share whose top hit equals the
exact top hit, recall@k the mean overlap of the top-k lists divided by k; with `--rerank-vectors`
a second line gives the same re-ranking `--rerank-depth` candidates.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a plain file: make the repo's `scripts` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import faiss
import numpy as np
from tqdm import tqdm

from rag_r1.search.corpus import count_passages
from rag_r1.search.dense import set_search_params
from rag_r1.search.rerank import RerankedIndex, open_vectors
from scripts.build_corpus.embedding_store import (
    iter_row_blocks, iter_shard_blocks, read_meta, sample_rows, write_vectors_file,
)


def new_index(factory: str, dim: int) -> faiss.Index:
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ValueError(f"FAISS cannot build factory string {factory!r}: {error}") from None


def is_mergeable(index: faiss.Index) -> bool:
    """True for index types whose shards FAISS can merge (flat codes and IVF), not HNSW."""
    return faiss.try_extract_index_ivf(index) is not None or \
        isinstance(faiss.downcast_index(index), faiss.IndexFlatCodes)


def index_bytes(index: faiss.Index) -> int:
    """Size of the index as written to disk (what a server has to load)."""
    return int(faiss.serialize_index(index).nbytes)


def train_template(factory: str, dim: int, train_vectors: np.ndarray) -> faiss.Index:
    """An empty index of the factory type, trained when the type needs training."""
    index = new_index(factory, dim)
    pq = faiss.downcast_index(faiss.try_extract_index_ivf(index) or index)
    if hasattr(pq, "do_polysemous_training"):
        # Polysemous codes only serve Hamming pre-filtering, which we never search with, and
        # training them costs minutes even on a few thousand vectors.
        pq.do_polysemous_training = False
    if not index.is_trained:
        if len(train_vectors) == 0:
            raise ValueError(f"{factory} needs training vectors and none were given")
        index.train(np.ascontiguousarray(train_vectors, dtype=np.float32))
    return index


def add_blocks(index: faiss.Index, blocks) -> faiss.Index:
    for block in blocks:
        index.add(block)
    return index


def merge_index_files(paths: list[Path]) -> faiss.Index:
    """One index holding the shard files' rows in the given order (ids 0..N-1 in that order).

    Shards are read one at a time, so memory holds the merged index and one shard."""
    if not paths:
        raise ValueError("no shard indexes to merge")
    merged = faiss.read_index(str(paths[0]))
    mergeable = is_mergeable(merged)
    # IVF lists carry explicit ids that must be shifted; flat codes are numbered by position.
    shift_ids = faiss.try_extract_index_ivf(merged) is not None
    for path in tqdm(paths[1:], desc="merge", disable=len(paths) < 3):
        shard = faiss.read_index(str(path))
        if mergeable:
            merged.merge_from(shard, merged.ntotal if shift_ids else 0)
        else:
            merged.add(shard.reconstruct_n(0, shard.ntotal))
    return merged


def exact_search(embedding_dir: Path, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k row ids by inner product, streaming the shards (no full flat index in RAM)."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    offset = 0
    for block in iter_row_blocks(embedding_dir):
        scores, ids = faiss.knn(queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_ids = np.concatenate([best_ids, ids + offset], axis=1)
        order = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(best_scores, order, axis=1)
        best_ids = np.take_along_axis(best_ids, order, axis=1)
        offset += len(block)
    return best_ids


def recall_against_exact(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> dict[str, float]:
    """recall@1 (same top hit) and recall@k (mean |top-k overlap| / k)."""
    top1 = float(np.mean(approx_ids[:, 0] == exact_ids[:, 0]))
    overlap = [len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx_ids, exact_ids)]
    return {"recall@1": top1, f"recall@{k}": float(np.mean(overlap))}


def _write_index(index: faiss.Index, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)


def build_shard_indexes(embedding_dir: Path, work_dir: Path, factory: str, train_size: int = 100_000,
                        seed: int = 0, show_progress: bool = True) -> list[Path]:
    """One index file per embedding shard in `work_dir` (finished files are kept and reused)."""
    meta = read_meta(embedding_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    factory_path = work_dir / "factory.txt"
    if factory_path.is_file() and factory_path.read_text() != factory:
        raise ValueError(f"{work_dir} holds shard indexes of {factory_path.read_text()!r}, not "
                         f"{factory!r}: delete it or choose another --out")
    factory_path.write_text(factory)
    # Every shard starts from the same trained quantizer, or their inverted lists cannot merge.
    template_path = work_dir / "trained.index"
    if template_path.is_file():
        template = faiss.read_index(str(template_path))
    else:
        template = _trained_index(embedding_dir, factory, train_size, seed)
        _write_index(template, template_path)
    paths = []
    for shard_id in tqdm(range(meta["num_shards"]), desc=f"index {factory}", disable=not show_progress):
        path = work_dir / f"shard_{shard_id:02d}.index"
        if not path.is_file():
            _write_index(add_blocks(faiss.clone_index(template), iter_shard_blocks(embedding_dir, shard_id)), path)
        paths.append(path)
    return paths


def _trained_index(embedding_dir: Path, factory: str, train_size: int, seed: int) -> faiss.Index:
    dim = read_meta(embedding_dir)["dim"]
    needs_training = not new_index(factory, dim).is_trained
    return train_template(factory, dim, sample_rows(embedding_dir, train_size, seed) if needs_training else None)


def build_index(embedding_dir: Path, out: Path, factory: str = "Flat", train_size: int = 100_000,
                nprobe: int | None = None, ef_search: int | None = None, seed: int = 0,
                keep_shard_indexes: bool = False, show_progress: bool = True) -> faiss.Index:
    """Build the per-shard indexes, merge them, set search knobs, write `out`; return the index.

    The per-shard files (`OUT.shards/`) are deleted after the merge unless `keep_shard_indexes`."""
    meta = read_meta(embedding_dir)
    work_dir = out.with_name(out.name + ".shards")
    if is_mergeable(new_index(factory, meta["dim"])):
        merged = merge_index_files(build_shard_indexes(embedding_dir, work_dir, factory, train_size,
                                                       seed, show_progress))
    else:
        blocks = tqdm(iter_row_blocks(embedding_dir), desc=f"index {factory}", unit="block",
                      disable=not show_progress)
        merged = add_blocks(_trained_index(embedding_dir, factory, train_size, seed), blocks)
    if merged.ntotal != meta["num_passages"]:
        raise RuntimeError(f"index holds {merged.ntotal} vectors, {embedding_dir}/meta.json says "
                           f"{meta['num_passages']} passages")
    set_search_params(merged, nprobe, ef_search)
    _write_index(merged, out)
    if not keep_shard_indexes and work_dir.exists():
        shutil.rmtree(work_dir)
    return merged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--embeddings", type=Path, help="embedding directory from build_corpus_embedding")
    source.add_argument("--shard-indexes", type=Path, nargs="+",
                        help="existing FAISS index files to merge, in corpus order")
    parser.add_argument("--out", type=Path, required=True, help="merged index file to write")
    parser.add_argument("--factory", default="Flat", help="FAISS factory string (default Flat)")
    parser.add_argument("--train-size", type=int, default=100_000,
                        help="rows sampled from all shards to train IVF/PQ/SQ (default 100000)")
    parser.add_argument("--nprobe", type=int, default=64, help="IVF lists searched per query (default 64)")
    parser.add_argument("--ef-search", type=int, default=128, help="HNSW search breadth (default 128)")
    parser.add_argument("--corpus", type=Path,
                        help="passage file; when given, its size must equal the index size")
    parser.add_argument("--recall-queries", type=int, default=1000,
                        help="corpus vectors used as queries for recall vs exact search (default 1000)")
    parser.add_argument("--recall-k", type=int, default=10, help="k of recall@k (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training and query samples")
    parser.add_argument("--rerank-vectors", type=Path,
                        help="also write the embeddings as one fp16 .npy here, for a server that re-ranks "
                             "this (compressed) index's candidates exactly: start_retrieval.py --rerank-vectors")
    parser.add_argument("--rerank-depth", type=int, default=100,
                        help="candidates re-ranked per query when reporting recall with --rerank-vectors")
    parser.add_argument("--keep-shard-indexes", action="store_true",
                        help="keep the per-shard index files (OUT.shards/) after the merge")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    if args.shard_indexes:
        missing = [str(p) for p in args.shard_indexes if not p.is_file()]
        if missing:
            parser.error(f"index files not found: {', '.join(missing)}")
        index = merge_index_files(args.shard_indexes)
        set_search_params(index, args.nprobe, args.ef_search)
        _write_index(index, args.out)
    else:
        index = build_index(args.embeddings, args.out, args.factory, args.train_size, args.nprobe,
                            args.ef_search, args.seed, args.keep_shard_indexes)
    if args.rerank_vectors is not None and not args.embeddings:
        parser.error("--rerank-vectors needs --embeddings (the vectors come from there)")
    if args.corpus is not None and count_passages(args.corpus) != index.ntotal:
        raise SystemExit(f"{args.corpus} has {count_passages(args.corpus)} passages but the index "
                         f"{args.out} holds {index.ntotal} vectors")
    size = index_bytes(index)
    print(f"{args.out}: {index.ntotal} vectors, {size / 2**20:.1f} MiB "
          f"({size / max(index.ntotal, 1):.0f} bytes/vector), built in {time.perf_counter() - started:.1f}s")
    searched = {"": index}
    if args.rerank_vectors is not None:
        print(f"full vectors for re-ranking: {write_vectors_file(args.embeddings, args.rerank_vectors)}")
        searched[f" re-ranking {args.rerank_depth} candidates"] = RerankedIndex(
            index, open_vectors(args.rerank_vectors), args.rerank_depth)

    exact_types = (faiss.IndexFlatIP, faiss.IndexFlat)
    if args.embeddings and not isinstance(faiss.downcast_index(index), exact_types):
        queries = sample_rows(args.embeddings, args.recall_queries, args.seed + 1)
        k = min(args.recall_k, index.ntotal)
        exact_ids = exact_search(args.embeddings, queries, k)
        for label, searcher in searched.items():
            recall = recall_against_exact(searcher.search(queries, k)[1], exact_ids, k)
            print(f"recall vs exact flat on {len(queries)} corpus-vector queries{label}:",
                  ", ".join(f"{name} {value:.3f}" for name, value in recall.items()))

if __name__ == "__main__":
    main()
