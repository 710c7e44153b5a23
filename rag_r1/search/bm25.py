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

    bm25s's own `index()` holds every token of the corpus in Python lists at once (3.2 GB per
    million 100-word passages, measured). Here the corpus is read in chunks of `chunk_size`
    passages; each chunk's (term, passage, term frequency) triples go to `out_dir/build/`, sorted
    by term. The score matrix (CSC, one column per term: bm25s's layout and scores) is then
    written front to back, one block of columns at a time, each block gathered from every chunk.
    Memory holds one chunk or one block, the vocabulary, 8 bytes per passage and 20 per term. A
    killed build started again keeps its finished chunks."""
    out_dir = Path(out_dir)
    work = _build_dir(out_dir, {"corpus": str(Path(corpus_path).resolve()), "chunk_size": chunk_size,
                                "corpus_bytes": Path(corpus_path).stat().st_size})
    vocab = _read_vocab(work)
    chunk_dirs = []
    bar = tqdm(desc="BM25 tokenize", unit="passage", disable=not show_progress)
    for number, texts in enumerate(_chunks(iter_passages(corpus_path), chunk_size)):
        chunk_dirs.append(work / f"chunk_{number:06d}")
        if not chunk_dirs[-1].is_dir():
            _write_chunk(chunk_dirs[-1], tokenize(texts), vocab, work, first_row=number * chunk_size)
        bar.update(len(texts))
    bar.close()
    if not chunk_dirs:
        raise ValueError(f"corpus {corpus_path} holds no passages")
    lengths = np.concatenate([np.load(chunk / "lengths.npy") for chunk in chunk_dirs])
    _write_matrix([_open_chunk(chunk) for chunk in chunk_dirs], lengths, len(vocab), out_dir,
                  block_entries=chunk_size * ENTRIES_PER_PASSAGE, show_progress=show_progress)
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


def _write_chunk(chunk_dir: Path, docs: list[list[str]], vocab: dict[str, int], work: Path, first_row: int) -> None:
    """One chunk's (term, row, tf) triples sorted by term, and its passage lengths; new terms join
    the vocabulary."""
    known = len(vocab)
    terms, rows, counts = [], [], []
    for row, tokens in enumerate(docs, start=first_row):
        ids, tf = np.unique(np.array([vocab.setdefault(t, len(vocab)) for t in tokens], dtype=np.int32),
                            return_counts=True)
        terms.append(ids)
        rows.append(np.full(len(ids), row, dtype=np.int32))
        counts.append(tf)
    # New terms reach the vocabulary file before the chunk exists: a resumed build reads them back
    # with the same ids.
    with (work / VOCAB_LINES).open("a", encoding="utf-8") as f:
        f.write("".join(token + "\n" for token in list(vocab)[known:]))
    term = np.concatenate(terms)
    order = np.argsort(term, kind="stable")  # rows stay ascending within a term
    tmp = chunk_dir.with_name(chunk_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    np.save(tmp / "term.npy", term[order])
    np.save(tmp / "row.npy", np.concatenate(rows)[order])
    np.save(tmp / "tf.npy", np.concatenate(counts).astype(np.uint16)[order])
    np.save(tmp / "lengths.npy", np.array([len(tokens) for tokens in docs], dtype=np.int32))
    os.replace(tmp, chunk_dir)


def _open_chunk(chunk_dir: Path) -> dict[str, np.ndarray]:
    return {name: np.load(chunk_dir / f"{name}.npy", mmap_mode="r") for name in ("term", "row", "tf")}


# A block of columns gathers about this many entries per passage of a chunk, so that a block
# weighs about what a chunk does (100-word passages hold ~57 distinct terms); a single term in
# more passages than that makes a bigger block.
ENTRIES_PER_PASSAGE = 64


def _write_matrix(chunks: list[dict[str, np.ndarray]], lengths: np.ndarray, num_terms: int, out_dir: Path,
                  block_entries: int, show_progress: bool) -> None:
    """bm25s's CSC score matrix: column t holds, by ascending row, idf(t) * tf / (tf + k1 * norm)."""
    df = np.zeros(num_terms, dtype=np.int64)
    for chunk in chunks:
        df += np.bincount(chunk["term"], minlength=num_terms)
        _drop_pages(chunk["term"])
    n = len(lengths)
    idf = np.log(1 + (n - df + 0.5) / (df + 0.5)).astype(np.float32)
    norm = (K1 * (1 - B + B * lengths / lengths.mean())).astype(np.float32)
    indptr = np.concatenate([[0], np.cumsum(df)])
    np.save(out_dir / BM25S_FILES["indptr"], indptr)
    data = np.lib.format.open_memmap(out_dir / BM25S_FILES["data"], "w+", np.float32, (int(indptr[-1]),))
    rows_out = np.lib.format.open_memmap(out_dir / BM25S_FILES["indices"], "w+", np.int32, (int(indptr[-1]),))
    # Column blocks of about `block_entries` entries, written front to back.
    cuts = np.unique(np.searchsorted(indptr, np.arange(0, indptr[-1], block_entries), side="right") - 1)
    bounds = [*cuts.tolist(), num_terms]
    for first, last in tqdm(list(zip(bounds[:-1], bounds[1:])), desc="BM25 scores", unit="block",
                            disable=not show_progress):
        parts = []
        for chunk in chunks:
            lo, hi = np.searchsorted(chunk["term"], [first, last])
            parts.append((chunk["term"][lo:hi], chunk["row"][lo:hi], chunk["tf"][lo:hi]))
        term, row, tf = (np.concatenate([part[i] for part in parts]) for i in range(3))
        # Chunks come in row order, so a stable sort by term keeps every column's rows ascending.
        order = np.argsort(term, kind="stable")
        term, row, tf = term[order], row[order], tf[order].astype(np.float32)
        span = slice(int(indptr[first]), int(indptr[last]))
        data[span] = idf[term] * tf / (tf + norm[row])
        rows_out[span] = row
        for array in (data, rows_out, *(chunk[name] for chunk in chunks for name in chunk)):
            _drop_pages(array)


def _drop_pages(array: np.memmap) -> None:
    """Write a memory-mapped array's changes to its file and unmap its pages from this process,
    which would otherwise keep every page it touched resident to the end (tens of GB for KILT:
    its chunk files and score matrix); the file and the page cache keep the data."""
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
