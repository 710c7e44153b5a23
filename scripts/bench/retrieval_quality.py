r"""Retrieval quality on a corpus whose questions name their evidence: recall@k of the supporting passages.

    python scripts/bench/retrieval_quality.py --corpus ../shared/data/hotpotqa_closed/corpus.jsonl \
        --questions ../shared/data/hotpotqa_closed/train.jsonl ../shared/data/hotpotqa_closed/test.jsonl \
        --k 1,3,5,6 --out docs/retrieval_quality.md

Every retriever (BM25, and the dense encoder over each FAISS index type) is asked two ways:
- "question": the whole question, top-k;
- "gold titles": one query per supporting passage's title (from the corpus), top-k each, the hits
  united, the way a multi-query search splits a multi-hop question into one query per fact.
Per question, recall@k is the share of its `supporting_ids` among the hits and "all" says whether
every one of them is there; the table gives the means over questions, the mean number of distinct
passages read, and per retriever the build time, the index size and queries per second.

An index type is a FAISS factory string, or `FACTORY+rerankN`: that compressed index re-ranking its
N best candidates exactly against the fp16 corpus vectors (rag_r1.search.rerank; "index MiB" is then
the compressed part, held in RAM, while the vectors stay on disk). `--encoder-backends torch
onnx-int8` searches the same corpus vectors with the queries of each backend, side by side.

The top-k lists for every k are prefixes of one search at the largest k. Corpus embeddings are
cached under `--cache-dir` keyed by the corpus bytes, the encoder and its max length, so reruns skip
the slow part. The table is written between two marker lines of `--out`; text around them is kept.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a plain file: make the repo's `scripts` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from rag_r1.llm_agent.modes import build_mode
from rag_r1.search.bm25 import BM25Retriever, build_bm25
from rag_r1.search.corpus import iter_passages, split_title
from rag_r1.search.dense import set_search_params
from rag_r1.search.encoder import ENCODER_BACKENDS, default_minilm_path, load_encoder
from rag_r1.search.rerank import RerankedIndex, parse_index_spec
from rag_r1.search.text_encoder import model_label
from rag_r1.sft.evidence import read_evidence_questions, title_queries
from scripts.build_corpus.build_corpus_embedding import build_embeddings
from scripts.build_corpus.build_corpus_index import index_bytes, train_template
from scripts.build_corpus.embedding_store import load_all, shard_path

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- retrieval_quality:begin -->", "<!-- retrieval_quality:end -->"
DEFAULT_INDEX_TYPES = ["Flat", "HNSW32", "IVF64,Flat", "IVF64,PQ16"]
QUERY_STYLES = ("question", "gold titles")


@dataclass
class Question:
    question: str
    supporting_ids: list[str]
    title_queries: list[str]  # distinct titles of the supporting passages, in supporting_ids order


@dataclass
class Run:
    """One retriever's cost and, per query style, one list of ranked-id lists per question."""

    name: str
    build_s: float
    index_bytes: int
    queries_per_s: float  # whole questions, end to end (dense: encoding + search)
    search_per_s: float  # the index search alone
    rankings: dict[str, list[list[list[str]]]] = field(default_factory=dict)


def parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k expects comma-separated integers like 1,3,5, got {text!r}")
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"--k values must be >= 1, got {text!r}")
    return ks


def load_evidence_questions(paths: list[Path], titles: dict[str, str]) -> tuple[list[Question], int]:
    """Questions with `supporting_ids` (all of them in the corpus) from every file, and how many rows had none."""
    questions, without = [], 0
    for path in paths:
        found, skipped = read_evidence_questions(path, titles)
        # The SFT builder's title queries, so this table measures what its searches can find.
        questions += [Question(q.question, list(q.supporting_ids), title_queries(q, titles, build_mode("single"))) for q in found]
        without += skipped
    return questions, without


def evidence_recall(rankings: list[list[list[str]]], gold: list[list[str]], k: int) -> dict[str, float]:
    """Means over questions of: share of gold ids in the union of each ranked list's top k
    ("recall"), all gold ids found ("all"), distinct passages in that union ("read")."""
    recall, found_all, read = [], [], []
    for lists, support in zip(rankings, gold, strict=True):
        found = {pid for ranked in lists for pid in ranked[:k]}
        hits = len(set(support) & found)
        recall.append(hits / len(set(support)))
        found_all.append(hits == len(set(support)))
        read.append(len(found))
    return {"recall": float(np.mean(recall)), "all": float(np.mean(found_all)), "read": float(np.mean(read))}


def to_ids(rows: np.ndarray, ids: list[str]) -> list[list[str]]:
    """Corpus rows (-1 = no hit, dropped) -> passage ids."""
    return [[ids[r] for r in row if r >= 0] for row in rows.tolist()]


def per_question(questions: list[Question], whole: list[list[str]], by_query: dict[str, list[str]]
                 ) -> dict[str, list[list[list[str]]]]:
    return {
        "question": [[ranked] for ranked in whole],
        "gold titles": [[by_query[t] for t in q.title_queries] for q in questions],
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_embeddings(corpus: Path, encoder: str, max_length: int, cache_dir: Path
                      ) -> tuple[np.ndarray, Path, float | None]:
    """(corpus vectors [N, dim] float32, their directory, seconds spent embedding or None when cached);
    embedded once per (corpus bytes, encoder, max length)."""
    key = hashlib.sha256(f"{file_sha256(corpus)}|{encoder}|{max_length}".encode()).hexdigest()[:16]
    out_dir = cache_dir / f"emb-{model_label(encoder)}-{key}"
    embed_s = None
    if not shard_path(out_dir, 0).is_file():  # the key pins every setting, so a finished shard is valid
        start = time.perf_counter()
        build_embeddings(corpus, out_dir, model=encoder, num_shards=1, device="cpu", max_length=max_length)
        embed_s = time.perf_counter() - start
    return load_all(out_dir), out_dir, embed_s


def run_bm25(corpus: Path, ids: list[str], whole: list[str], subs: list[str], kmax: int, work: Path):
    start = time.perf_counter()
    index_dir = build_bm25(corpus, work / "bm25")
    build_s = time.perf_counter() - start
    size = sum(p.stat().st_size for p in index_dir.rglob("*") if p.is_file())
    retriever = BM25Retriever(index_dir)
    start = time.perf_counter()
    whole_ranked = to_ids(retriever.search(whole, kmax)[1], ids)
    qps = len(whole) / (time.perf_counter() - start)
    sub_ranked = to_ids(retriever.search(subs, kmax)[1], ids) if subs else []
    return Run("BM25", build_s, size, qps, qps), whole_ranked, dict(zip(subs, sub_ranked))


@dataclass
class EncodedQueries:
    """One encoder backend's vectors of the whole questions (timed) and of the gold-title queries."""

    backend: str
    whole: np.ndarray
    encode_s: float
    subs: np.ndarray


def encode_queries(encoder_name: str, backend: str, max_length: int, cache_dir: Path, whole: list[str],
                   subs: list[str]) -> EncodedQueries:
    encoder = load_encoder(encoder_name, backend, cache_dir=cache_dir / "encoder_onnx", max_length=max_length)
    start = time.perf_counter()
    whole_vecs = encoder.encode_queries(whole)
    encode_s = time.perf_counter() - start
    return EncodedQueries(backend, whole_vecs, encode_s, encoder.encode_queries(subs))


def build_dense(spec: str, vectors: np.ndarray, nprobe: int, ef_search: int):
    """(index, RAM bytes, build seconds) for a factory string, or FACTORY+rerankN (rag_r1.search.rerank):
    the compressed index re-ranking N candidates against the fp16 vectors, which stay on disk."""
    factory, depth = parse_index_spec(spec)
    start = time.perf_counter()
    index = train_template(factory, vectors.shape[1], vectors)
    index.add(vectors)
    set_search_params(index, nprobe=nprobe, ef_search=ef_search)
    size = index_bytes(index)
    if depth is not None:
        index = RerankedIndex(index, vectors.astype(np.float16), depth)
    return index, size, time.perf_counter() - start


def run_dense(spec: str, index, size: int, build_s: float, ids: list[str], queries: EncodedQueries,
              subs: list[str], kmax: int):
    start = time.perf_counter()
    whole_ranked = to_ids(index.search(queries.whole, kmax)[1], ids)
    search_s = time.perf_counter() - start
    sub_ranked = to_ids(index.search(queries.subs, kmax)[1], ids) if subs else []
    name = f"dense {spec}" + ("" if queries.backend == "torch" else f" ({queries.backend})")
    # End to end is the path a server takes: encoding the questions plus the index search.
    n = len(queries.whole)
    run = Run(name, build_s, size, n / (queries.encode_s + search_s), n / search_s)
    return run, whole_ranked, dict(zip(subs, sub_ranked))


def render(runs: list[Run], questions: list[Question], ks: list[int], header: list[str]) -> str:
    gold = [q.supporting_ids for q in questions]
    lines = header + ["", "| retriever | build s | index MiB | queries/s end to end | queries/s search only |",
                      "|---|---:|---:|---:|---:|"]
    lines += [f"| {r.name} | {r.build_s:.2f} | {r.index_bytes / 2**20:.2f} | {r.queries_per_s:.0f} | "
              f"{r.search_per_s:.0f} |" for r in runs]
    head = ([f"recall@{k}" for k in ks] + [f"all@{k}" for k in ks]
            + ["passages read (" + " / ".join(f"k={k}" for k in ks) + ")"])
    lines += ["", "| retriever | queries | " + " | ".join(head) + " |",
              "|---|---|" + "---:|" * (2 * len(ks)) + "---|"]
    for run in runs:
        for style in QUERY_STYLES:
            scores = [evidence_recall(run.rankings[style], gold, k) for k in ks]
            cells = ([f"{s['recall']:.3f}" for s in scores] + [f"{s['all']:.3f}" for s in scores]
                     + [" / ".join(f"{s['read']:.1f}" for s in scores)])
            lines.append(f"| {run.name} | {style} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_doc(out: Path, table: str) -> None:
    """Put the table between the markers of `out` (keeping the rest), or start a new page."""
    block = f"{BEGIN}\n{table}{END}"
    text = out.read_text(encoding="utf-8") if out.is_file() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = "# Retrieval quality\n\n" + block + "\n" + text
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="passages JSONL/TSV {id, contents}")
    parser.add_argument("--questions", type=Path, nargs="+", required=True,
                        help="question JSONL file(s) with supporting_ids (rows without them are skipped)")
    parser.add_argument("--encoder", default=None, help="sentence-transformers dir or name (default: pip MiniLM)")
    parser.add_argument("--index-types", nargs="*", default=DEFAULT_INDEX_TYPES,
                        help="FAISS factory strings or FACTORY+rerankN, space separated (they contain "
                             "commas); none: BM25 only; "
                             f"default: {' '.join(DEFAULT_INDEX_TYPES)}")
    parser.add_argument("--no-bm25", action="store_true", help="skip BM25")
    parser.add_argument("--encoder-backends", nargs="+", choices=ENCODER_BACKENDS, default=["torch"],
                        help="query encoder backends, each searched over the same (torch) corpus vectors; "
                             "rows of other backends than torch are named '(backend)' (default: torch)")
    parser.add_argument("--k", type=parse_ks, default=[1, 3, 5], help="comma-separated k values (default 1,3,5)")
    parser.add_argument("--nprobe", type=int, default=8, help="IVF lists searched per query (default 8)")
    parser.add_argument("--ef-search", type=int, default=128, help="HNSW search breadth (default 128)")
    parser.add_argument("--max-length", type=int, default=256, help="encoder tokens per passage/query (default 256)")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "retrieval_quality",
                        help="where corpus embeddings are cached (default .cache/retrieval_quality)")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write the table into")
    args = parser.parse_args(argv)
    for path in [args.corpus, *args.questions]:
        if not path.is_file():
            parser.error(f"file not found: {path}")

    started = time.perf_counter()
    passages = list(iter_passages(args.corpus))
    ids = [p["id"] for p in passages]
    titles = {p["id"]: split_title(p["contents"])[0] for p in passages}
    questions, without = load_evidence_questions(args.questions, titles)
    if not questions:
        raise SystemExit(f"no question in {[str(p) for p in args.questions]} has supporting_ids")
    whole = [q.question for q in questions]
    subs = list(dict.fromkeys(t for q in questions for t in q.title_queries))
    kmax = max(args.k)

    runs = []
    with tempfile.TemporaryDirectory() as work:
        if not args.no_bm25:
            run, whole_ranked, by_query = run_bm25(args.corpus, ids, whole, subs, kmax, Path(work))
            run.rankings = per_question(questions, whole_ranked, by_query)
            runs.append(run)
    encoder_name = args.encoder or str(default_minilm_path())
    embedded = "no dense index"
    if args.index_types:
        vectors, emb_dir, embed_s = cached_embeddings(args.corpus, encoder_name, args.max_length, args.cache_dir)
        embedded = (f"corpus embedded in {embed_s:.0f} s" if embed_s is not None
                    else "corpus embeddings read from the cache")
        encoded = [encode_queries(encoder_name, backend, args.max_length, args.cache_dir, whole, subs)
                   for backend in args.encoder_backends]
        for spec in args.index_types:
            index, size, build_s = build_dense(spec, vectors, args.nprobe, args.ef_search)
            for queries in encoded:
                run, whole_ranked, by_query = run_dense(spec, index, size, build_s, ids, queries, subs, kmax)
                run.rankings = per_question(questions, whole_ranked, by_query)
                runs.append(run)

    command = "python scripts/bench/retrieval_quality.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    header = [
        f"Command: `{command}`",
        "",
        f"{len(questions)} questions ({without} without supporting_ids skipped), {len(passages)} passages, "
        f"{len(subs)} distinct gold-title queries; encoder `{model_label(encoder_name)}` (max length "
        f"{args.max_length}); IVF nprobe {args.nprobe}, HNSW efSearch {args.ef_search}. "
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()} with "
        f"{os.cpu_count()} CPUs, {time.perf_counter() - started:.0f} s in all ({embedded}). Build time "
        "excludes corpus embedding; queries/s are for the whole questions in one batch, end to end "
        "(dense: encoding + search) and for the index search alone; timings are noisy on a shared machine.",
    ]
    table = render(runs, questions, args.k, header)
    if args.out is not None:
        write_doc(args.out, table)
    print(table)
    return table


if __name__ == "__main__":
    main()
