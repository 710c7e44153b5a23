"""BM25 retrieval with bm25s, built from the same corpus file as the dense index.

Build once, then serve from the saved directory:

    python -m rag_r1.search.bm25 --corpus corpus.jsonl --out .cache/bm25/corpus
    python start_retrieval.py --retriever bm25 --corpus corpus.jsonl --index .cache/bm25/corpus
"""
from __future__ import annotations

import argparse
import json
import logging
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


def build_bm25(corpus_path: str | Path, out_dir: str | Path, chunk_size: int = 10_000) -> Path:
    """Index every passage of the corpus (title line included) and save it to `out_dir`."""
    out_dir = Path(out_dir)
    tokens: list[list[str]] = []
    chunk: list[str] = []
    for passage in tqdm(iter_passages(corpus_path), desc="tokenize", unit="passage"):
        chunk.append(passage["contents"])
        if len(chunk) == chunk_size:
            tokens.extend(tokenize(chunk))
            chunk = []
    tokens.extend(tokenize(chunk))
    if not tokens:
        raise ValueError(f"corpus {corpus_path} holds no passages")
    model = bm25s.BM25()
    model.index(tokens, show_progress=True)
    model.save(str(out_dir))
    meta = {"corpus": str(Path(corpus_path).resolve()), "num_passages": len(tokens)}
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=1))
    return out_dir


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
    args = parser.parse_args()
    out = build_bm25(args.corpus, args.out)
    print(f"BM25 index written to {out}")


if __name__ == "__main__":
    main()
