"""BM25 retrieval with bm25s, built from the same corpus file as the dense index.

Build once, then serve from the saved directory:

    python -m rag_r1.search.bm25 --corpus corpus.jsonl --out .cache/bm25/corpus [--chunk-size 100000]
    python start_retrieval.py --retriever bm25 --corpus corpus.jsonl --index .cache/bm25/corpus

The build reads the corpus in chunks and writes bm25s's own files (so bm25s loads and searches
them), in memory bounded by one chunk and the vocabulary; the server memory-maps the score arrays.
"""
from __future__ import annotations

import argparse
import json
import logging
import mmap
import os
import shutil
import time
from pathlib import Path

import bm25s
import numpy as np
from tqdm import tqdm

from rag_r1.search.corpus import iter_passages
from rag_r1.search.retriever import pad_hits

log = logging.getLogger(__name__)

META_FILE = "rag_r1_meta.json"
STOPWORDS = "en"


def tokenize(texts: list[str]) -> list[list[str]]:
    """Lower-cased word tokens without English stopwords; queries and passages must share this."""
    return bm25s.tokenize(texts, stopwords=STOPWORDS, return_ids=False, show_progress=False)


# bm25s's defaults (method "lucene"): the builder below writes what bm25s.BM25().index() would.
K1, B = 1.5, 0.75
BM25S_FILES = {"data": "data.csc.index.npy", "indices": "indices.csc.index.npy",
               "indptr": "indptr.csc.index.npy", "vocab": "vocab.index.json", "params": "params.index.json"}
VOCAB_LINES = "vocab.txt"  # build state: tokens in id order, one a line (tokens never hold whitespace)


def build_bm25(corpus_path: str | Path, out_dir: str | Path, chunk_size: int = 100_000,
               show_progress: bool = True) -> Path:
    """Index every passage of the corpus (title line included) into `out_dir`, in bounded memory.

    bm25s's own `index()` holds every token of the corpus in Python lists at once (tens of GB for
    KILT). Here the corpus is read in chunks of `chunk_size` passages: each chunk's (term, passage,
    term frequency) triples go to a sorted file in `out_dir/build/`; then the score matrix (CSC,
    one column per term, bm25s's layout and scores) is filled column slice by column slice into
    memory-mapped arrays on disk. Memory holds one chunk, the vocabulary and 12 bytes per term and
    4 per passage. A killed build started again keeps its finished chunks."""
    out_dir = Path(out_dir)
    work = _build_dir(out_dir, {"corpus": str(Path(corpus_path).resolve()), "chunk_size": chunk_size,
                                "corpus_bytes": Path(corpus_path).stat().st_size})
    vocab = _read_vocab(work)
    lengths = []
    chunks = _chunks(iter_passages(corpus_path), chunk_size)
    bar = tqdm(desc="BM25 tokenize", unit="passage", disable=not show_progress)
    for number, texts in enumerate(chunks):
        path = work / f"chunk_{number:06d}.npz"
        if not path.is_file():
            _write_chunk(path, tokenize(texts), vocab, work, first_row=number * chunk_size)
        with np.load(path) as chunk:
            lengths.append(chunk["lengths"])
        bar.update(len(texts))
    bar.close()
    if not lengths:
        raise ValueError(f"corpus {corpus_path} holds no passages")
    lengths = np.concatenate(lengths)
    _write_matrix(sorted(work.glob("chunk_*.npz")), lengths, len(vocab), out_dir, show_progress)
    # bm25s maps a query of unknown words to the empty token, one past the last column.
    vocab[""] = len(vocab)
    (out_dir / BM25S_FILES["vocab"]).write_text(json.dumps(vocab, ensure_ascii=False))
    params = {"k1": K1, "b": B, "delta": 0.5, "method": "lucene", "idf_method": "lucene", "dtype": "float32",
              "int_dtype": "int32", "num_docs": len(lengths), "version": bm25s.__version__, "backend": "numpy"}
    (out_dir / BM25S_FILES["params"]).write_text(json.dumps(params, indent=4))
    meta = {"corpus": str(Path(corpus_path).resolve()), "num_passages": len(lengths)}
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=1))
    shutil.rmtree(work)
    return out_dir


def _build_dir(out_dir: Path, run: dict) -> Path:
    """`out_dir/build/`, kept from a killed build of the same corpus and chunk size, else emptied."""
    work = out_dir / "build"
    state = work / "run.json"
    if work.is_dir() and (not state.is_file() or json.loads(state.read_text()) != run):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps(run))
    return work


def _chunks(passages, size: int):
    chunk = []
    for passage in passages:
        chunk.append(passage["contents"])
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _read_vocab(work: Path) -> dict[str, int]:
    path = work / VOCAB_LINES
    tokens = path.read_text(encoding="utf-8").split("\n")[:-1] if path.is_file() else []
    return {token: i for i, token in enumerate(tokens)}


def _write_chunk(path: Path, docs: list[list[str]], vocab: dict[str, int], work: Path, first_row: int) -> None:
    """One chunk's sorted (term, row, tf) triples and passage lengths; new terms join the vocabulary."""
    known = len(vocab)
    terms, rows, counts = [], [], []
    for row, tokens in enumerate(docs, start=first_row):
        ids, tf = np.unique([vocab.setdefault(t, len(vocab)) for t in tokens], return_counts=True)
        terms.append(ids)
        rows.append(np.full(len(ids), row, dtype=np.int32))
        counts.append(tf)
    # New terms reach the vocabulary file before the chunk file exists: a resumed build reads
    # them back with the same ids.
    with (work / VOCAB_LINES).open("a", encoding="utf-8") as f:
        f.write("".join(token + "\n" for token in list(vocab)[known:]))
    term = np.concatenate(terms).astype(np.int32) if terms else np.zeros(0, np.int32)
    order = np.argsort(term, kind="stable")  # rows stay ascending within a term
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, term=term[order], row=np.concatenate(rows)[order],
             tf=np.concatenate(counts).astype(np.uint16)[order],
             lengths=np.array([len(tokens) for tokens in docs], dtype=np.int32))
    os.replace(tmp, path)


def _write_matrix(chunk_paths: list[Path], lengths: np.ndarray, num_terms: int, out_dir: Path,
                  show_progress: bool) -> None:
    """bm25s's CSC score matrix: column t holds, by ascending row, idf(t) * tf / (tf + k1 * norm)."""
    df = np.zeros(num_terms, dtype=np.int64)
    for path in chunk_paths:
        with np.load(path) as chunk:
            df += np.bincount(chunk["term"], minlength=num_terms)
    n = len(lengths)
    idf = np.log(1 + (n - df + 0.5) / (df + 0.5)).astype(np.float32)
    norm = (K1 * (1 - B + B * lengths / lengths.mean())).astype(np.float32)
    indptr = np.concatenate([[0], np.cumsum(df)])
    np.save(out_dir / BM25S_FILES["indptr"], indptr)
    data = np.lib.format.open_memmap(out_dir / BM25S_FILES["data"], "w+", np.float32, (int(indptr[-1]),))
    rows_out = np.lib.format.open_memmap(out_dir / BM25S_FILES["indices"], "w+", np.int32, (int(indptr[-1]),))
    next_slot = indptr[:-1].copy()
    for path in tqdm(chunk_paths, desc="BM25 scores", unit="chunk", disable=not show_progress):
        with np.load(path) as chunk:
            term, row, tf = chunk["term"], chunk["row"], chunk["tf"].astype(np.float32)
        # Chunks come in row order, so appending each chunk's rows after the previous ones keeps
        # every column sorted by row.
        starts = np.searchsorted(term, term, side="left")
        slot = next_slot[term] + np.arange(len(term)) - starts
        data[slot] = idf[term] * tf / (tf + norm[row])
        rows_out[slot] = row
        next_slot += np.bincount(term, minlength=num_terms)
        for array in (data, rows_out):
            _release_written_pages(array)


def _release_written_pages(array: np.memmap) -> None:
    """Write a memory-mapped array's dirty pages to its file and drop them from this process: the
    scattered writes touch pages all over the file, which would otherwise stay resident until the
    end (14 GB for KILT)."""
    array.flush()
    array._mmap.madvise(mmap.MADV_DONTNEED)  # numpy keeps the mmap object in this private attribute


class BM25Retriever:
    """Sparse lexical search; passages that share no term with the query are not returned."""

    name = "bm25"

    def __init__(self, index_dir: str | Path, mmap: bool = True):
        index_dir = Path(index_dir)
        meta_path = index_dir / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"BM25 index not found: {meta_path} is missing (build it with python -m rag_r1.search.bm25)"
            )
        start = time.perf_counter()
        self.model = bm25s.BM25.load(str(index_dir), mmap=mmap, show_progress=False)
        self._size = int(json.loads(meta_path.read_text())["num_passages"])
        log.info("loaded BM25 index %s (%d passages, mmap=%s) in %.2fs",
                 index_dir, self._size, mmap, time.perf_counter() - start)

    @property
    def size(self) -> int:
        return self._size

    def search(self, queries: list[str], topk: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(topk, self.size)
        rows, scores = self.model.retrieve(tokenize(queries), k=k, show_progress=False)
        rows = rows.astype(np.int64)
        rows[scores <= 0] = -1
        return pad_hits(scores.astype(np.float32), rows, topk)


def main() -> None:
    parser = argparse.ArgumentParser(description="Build a BM25 index (bm25s) from a JSONL/TSV corpus.")
    parser.add_argument("--corpus", required=True, help="passages, .jsonl or .tsv")
    parser.add_argument("--out", required=True, help="directory to write the index to")
    parser.add_argument("--chunk-size", type=int, default=100_000,
                        help="passages tokenized at a time: memory vs number of build files (default 100000)")
    args = parser.parse_args()
    if args.chunk_size < 1:
        parser.error("--chunk-size must be at least 1")
    out = build_bm25(args.corpus, args.out, chunk_size=args.chunk_size)
    print(f"BM25 index written to {out}")


if __name__ == "__main__":
    main()
