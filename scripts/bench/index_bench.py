"""Index benchmark: Flat vs HNSW vs IVF-SQ8 vs IVF-PQ on real Wikipedia passages, MiniLM on CPU.

    python -m scripts.bench.index_bench [--out docs/index_benchmarks.md]

Pipeline (each step cached under `--work`, default .cache/bench, git-ignored):
1. split ../shared/data/kilt_sample (KILT layout, 10,356 articles) into 100-word passages;
2. embed them with the pip-shipped all-MiniLM-L6-v2 (384-d) in 4 resumable shards; this is the
   long step (tens of minutes on 2 busy cores) and a re-run reuses every finished chunk;
   `--no-embed` benchmarks the passages embedded so far (a prefix of the corpus, at least
   `--min-passages`) while a run is still going;
3. encode `--num-queries` real questions (default: NQ from ../shared/data/qa7) as queries;
4. for each index type: build time (training + adding), serialized bytes and bytes/vector,
   latency of one-query searches (p50) and of one batched search (ms per query), and recall@1
   (same top hit as exact search) / recall@10 (mean top-10 overlap / 10) against the Flat index.
Writes a Markdown table with the command, machine and load to `--out`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a plain file: make the repo's `scripts` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import faiss
import numpy as np

from rag_r1.search.dense import set_search_params
from rag_r1.search.encoder import Encoder
from rag_r1.search.rerank import RerankedIndex
from scripts.build_corpus.build_corpus_embedding import build_embeddings, resolve_model
from scripts.build_corpus.build_corpus_index import index_bytes, recall_against_exact, train_template
from scripts.build_corpus.embedding_store import load_embedded_prefix, read_meta
from scripts.build_corpus.split_kilt_to_100 import split_kilt

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# (factory string, search settings to measure): nlist 512 ~ 4*sqrt(N) for ~30k vectors, and
# 512*39 (FAISS's minimum training points per list) stays under the corpus size.
DEFAULT_CONFIGS = [
    ("Flat", [{}]),
    ("HNSW32", [{"ef_search": 64}, {"ef_search": 128}, {"ef_search": 256}]),
    ("IVF512,SQ8", [{"nprobe": 8}, {"nprobe": 32}, {"nprobe": 128}]),
    # "rerank": candidates re-ranked exactly against the fp16 vectors on disk (rag_r1.search.rerank),
    # with only the compressed codes in RAM.
    ("IVF512,PQ48", [{"nprobe": 32}, {"nprobe": 128}, {"nprobe": 128, "rerank": 100}]),
    ("IVF512,PQ96", [{"nprobe": 32}, {"nprobe": 128}]),
    ("PQ32", [{}, {"rerank": 100}]),
    ("IVF512,PQ32", [{"nprobe": 32, "rerank": 100}, {"nprobe": 128, "rerank": 100}]),
]


def read_questions(path: Path, limit: int) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"questions file not found: {path}")
    questions = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if len(questions) == limit:
                break
            if line.strip():
                row = json.loads(line)
                if "question" not in row:
                    raise ValueError(f"{path}: line {number} has no 'question'")
                questions.append(row["question"])
    return questions


def search_latencies(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[float, float]:
    """(p50 ms of single-query searches, ms per query of one batched search)."""
    single = []
    for query in queries:
        started = time.perf_counter()
        index.search(query[None, :], k)
        single.append(time.perf_counter() - started)
    started = time.perf_counter()
    index.search(queries, k)
    batched = time.perf_counter() - started
    return 1000 * float(np.median(single)), 1000 * batched / len(queries)


def benchmark(vectors: np.ndarray, queries: np.ndarray, configs=DEFAULT_CONFIGS, k: int = 10,
              seed: int = 0) -> list[dict]:
    """One result row per (index type, search setting)."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, exact_ids = exact.search(queries, k)
    rng = np.random.default_rng(seed)
    full_vectors = vectors.astype(np.float16)  # what a re-ranking server memory-maps
    rows = []
    for factory, settings in configs:
        started = time.perf_counter()
        train = vectors[rng.choice(len(vectors), size=min(len(vectors), 100_000), replace=False)]
        index = train_template(factory, vectors.shape[1], train)
        index.add(vectors)
        build_seconds = time.perf_counter() - started
        size = index_bytes(index)
        for setting in settings:
            set_search_params(index, setting.get("nprobe"), setting.get("ef_search"))
            searched = index if "rerank" not in setting else RerankedIndex(index, full_vectors, setting["rerank"])
            p50_ms, batch_ms = search_latencies(searched, queries, k)
            _, ids = searched.search(queries, k)
            recall = recall_against_exact(ids, exact_ids, k)
            rows.append({
                "index": factory,
                "search": ", ".join(f"{name}={value}" for name, value in setting.items())
                or ("exact" if factory == "Flat" else "default"),
                "build_s": build_seconds, "bytes": size, "bytes_per_vector": size / index.ntotal,
                "p50_ms": p50_ms, "batch_ms": batch_ms,
                "recall@1": recall["recall@1"], f"recall@{k}": recall[f"recall@{k}"],
            })
            print(rows[-1], flush=True)
    return rows


def machine_description() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    return (f"{cpu}, {os.cpu_count()} cores visible, {platform.system()} {platform.release()}, "
            f"FAISS {faiss.__version__}, FAISS threads: {faiss.omp_get_max_threads()}")


def bytes_per_dimension(factory: str) -> float:
    """Stored bytes per vector dimension of a factory string's vector codes."""
    if "PQ" in factory:
        return 0.0
    for code, size in (("SQ8", 1.0), ("SQ4", 0.5), ("SQfp16", 2.0)):
        if code in factory:
            return size
    return 4.0


def render_markdown(rows: list[dict], context: dict, k: int = 10) -> str:
    lines = [
        "# Index benchmark: Flat vs HNSW vs IVF-SQ8 vs IVF-PQ",
        "",
        f"Made by `scripts/bench/index_bench.py` on {context['date']}:",
        "",
        "```",
        context["command"],
        "```",
        "",
        f"- Machine: {context['machine']}. Load average {context['load_before']} before and "
        f"{context['load_after']} after the run: the CPU was shared with other jobs, so times are "
        "noisy (compare rows with each other, not with other machines).",
        f"- Corpus: {context['passages']:,} 100-word passages of `kilt_sample` "
        f"({context['corpus_note']}), embedded with {context['model']} ({context['dim']}-d, "
        "normalized, inner product).",
        f"- Queries: the first {context['queries']} questions of `{context['questions']}`, "
        "encoded with the same model. Recall is against exact Flat search with the same queries: "
        f"recall@1 = share of queries with the same top hit, recall@{k} = mean overlap of the top-{k} "
        f"lists / {k}. These questions mostly ask about articles outside this 10k-article sample: "
        f"the mean exact score is {context['score_top1']:.3f} for the 1st and {context['score_top10']:.3f} "
        f"for the 10th hit, so the top hits are close in score: a hard case for approximate indexes.",
        "- Build = training (IVF/PQ/SQ, on all vectors here) + adding; latency p50 = one query per "
        "search call; batch = one call with all queries, per query.",
        "- `rerank=N` rows: the compressed index hands N candidates per query to an exact re-rank "
        "against the full vectors in fp16 (`rag_r1.search.rerank`), which a server memory-maps from "
        f"disk ({2 * context['dim']} bytes a vector there); size and bytes/vector count only what "
        "stays in RAM, the compressed index.",
        "",
        f"| index | search | build s | size MiB | bytes/vector | p50 ms (1 query) | ms/query (batch) "
        f"| recall@1 | recall@{k} |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['index']} | {row['search']} | {row['build_s']:.1f} | {row['bytes'] / 2**20:.1f} "
            f"| {row['bytes_per_vector']:.0f} | {row['p50_ms']:.3f} | {row['batch_ms']:.3f} "
            f"| {row['recall@1']:.3f} | {row[f'recall@{k}']:.3f} |")
    lines += ["", "## Memory per million passages", "",
              "Index bytes grow linearly with the corpus. Per million passages at the measured "
              "bytes/vector, and for the 1024-d BGE-large default with the per-dimension part "
              "rescaled (4 bytes a dimension for Flat and HNSW's stored vectors, 1 for SQ8, none "
              "for PQ codes; HNSW's graph and IVF's ids do not depend on the dimension). IVF and PQ "
              "rows include their trained tables (centroids, codebooks: about 1-2 MB here) spread "
              "over this corpus, so they overstate the per-million cost of those types:", "",
              f"| index | {context['dim']}-d, GB per 1M passages | 1024-d, GB per 1M passages |",
              "|---|---:|---:|"]
    seen = set()
    for row in rows:
        if row["index"] in seen:
            continue
        seen.add(row["index"])
        scaled = row["bytes_per_vector"] + (1024 - context["dim"]) * bytes_per_dimension(row["index"])
        lines.append(f"| {row['index']} | {row['bytes_per_vector'] / 1e3:.2f} | {scaled / 1e3:.2f} |")
    approximate = [row for row in rows if row["index"] != "Flat"]
    if approximate:
        smallest = min(approximate, key=lambda row: row["bytes_per_vector"])
        best = max(approximate, key=lambda row: row[f"recall@{k}"])
        fastest = min(rows, key=lambda row: row["p50_ms"])
        lines += ["", "## Read off this run", "",
                  f"- Smallest: {smallest['index']} at {smallest['bytes_per_vector']:.0f} bytes/vector "
                  f"(recall@{k} {smallest[f'recall@{k}']:.3f} with {smallest['search']}).",
                  f"- Highest approximate recall@{k}: {best['index']} with {best['search']} "
                  f"({best[f'recall@{k}']:.3f}).",
                  f"- Lowest single-query latency: {fastest['index']} ({fastest['search']}), "
                  f"{fastest['p50_ms']:.3f} ms."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kilt", type=Path, default=SHARED_DATA / "kilt_sample" / "kilt_knowledgesource.jsonl",
                        help="KILT-layout knowledge source (default: ../shared/data/kilt_sample)")
    parser.add_argument("--questions", type=Path, default=SHARED_DATA / "qa7" / "nq.jsonl",
                        help="JSONL with a 'question' field, used as queries (default: qa7/nq.jsonl)")
    parser.add_argument("--num-queries", type=int, default=500, help="queries to use (default 500)")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / ".cache" / "bench",
                        help="cache of the passages and embeddings (default .cache/bench)")
    parser.add_argument("--no-embed", action="store_true",
                        help="do not embed; benchmark the passages embedded so far")
    parser.add_argument("--min-passages", type=int, default=20_000,
                        help="refuse to benchmark fewer embedded passages (default 20000)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "index_benchmarks.md",
                        help="Markdown file to write (default docs/index_benchmarks.md)")
    parser.add_argument("--index-types", nargs="+", metavar="FACTORY",
                        help="measure only these factory strings of the default configurations "
                             "(Flat is always measured: it is the recall reference)")
    parser.add_argument("--threads", type=int, default=1,
                        help="FAISS threads (default 1: on a shared CPU, OpenMP threads waiting for "
                             "each other make timings erratic)")
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)

    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    corpus = args.work / "kilt_sample_100w.jsonl"
    split_kilt(args.kilt, corpus)
    embedding_dir = args.work / "kilt_sample_minilm"
    encoder = Encoder(resolve_model("minilm"))
    if not args.no_embed:
        build_embeddings(corpus, embedding_dir, model="minilm", num_shards=4, chunk_size=1024, encoder=encoder)
    meta = read_meta(embedding_dir)
    vectors = load_embedded_prefix(embedding_dir)
    if len(vectors) < args.min_passages:
        raise SystemExit(f"only {len(vectors)} passages embedded in {embedding_dir} "
                         f"(need {args.min_passages}): run without --no-embed to finish embedding")

    questions = read_questions(args.questions, args.num_queries)
    queries = encoder.encode_queries(questions)
    configs = [(factory, settings) for factory, settings in DEFAULT_CONFIGS
               if args.index_types is None or factory in {"Flat", *args.index_types}]
    rows = benchmark(vectors, queries, configs)
    exact_scores, _ = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)

    complete = len(vectors) == meta["num_passages"]
    context = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m scripts.bench.index_bench", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_description(),
        "load_before": load_before,
        "load_after": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "passages": len(vectors),
        "corpus_note": "all of them" if complete else
        f"the first {len(vectors):,} of {meta['num_passages']:,}, the part embedded when the run was made",
        "model": "all-MiniLM-L6-v2 (pip-shipped)",
        "dim": vectors.shape[1],
        "queries": len(questions),
        "questions": args.questions.name,
        "score_top1": float(exact_scores[:, 0].mean()),
        "score_top10": float(exact_scores[:, 9].mean()),
    }
    args.out.write_text(render_markdown(rows, context))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
