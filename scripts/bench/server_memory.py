"""Retrieval server memory and start-up: RSS after load and after N queries, per index layout.

    python -m scripts.bench.server_memory --corpus ../shared/data/hotpotqa_closed/corpus.jsonl \
        --questions ../shared/data/hotpotqa_closed/train.jsonl \
        --server "Flat=--index flat.faiss" --server "Flat in RAM=--index flat.faiss --no-mmap" \
        --server "PQ32 + re-rank=--index pq32.faiss --rerank-vectors fp16.npy" [--synthetic-rows 1000000]

Each `--server LABEL=FLAGS` starts start_retrieval.py (dense, onnx-int8 encoder, cache off) with
those flags, reads the process's resident memory from /proc (anonymous = the process's own, file
= pages of memory-mapped files, which the kernel can drop and read again), sends `--queries`
questions in requests of 10, and reads it again. The index load time comes from the server's log.
`--synthetic-rows N` adds a server over N random vectors (PQ32 codes + fp16 full vectors) with a
stub corpus, to show that loading a memory-mapped index does not grow with its size.
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import numpy as np

from rag_r1.llm_agent.config import AgentConfig
from rag_r1.search.client import RetrievalClient
from rag_r1.search.launcher import ServerProcess

QUERIES_PER_REQUEST = 10


def resident_mib(pid: int) -> dict[str, float]:
    """RssAnon and RssFile of a process, MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def index_load_seconds(log: str) -> float:
    found = re.findall(r"loaded FAISS index .* in ([0-9.]+)s", log)
    return float(found[-1]) if found else float("nan")


def measure(label: str, flags: list[str], corpus: Path, questions: list[str], work: Path,
            encoder_cache: Path) -> dict:
    args = ["--retriever", "dense", "--corpus", corpus, "--encoder-backend", "onnx-int8",
            "--encoder-cache", encoder_cache, "--cache-size", "0", *flags]
    log_path = work / f"{re.sub(r'[^A-Za-z0-9]+', '_', label)}.log"
    with ServerProcess(args, log_path).start(timeout=900) as server:
        loaded = resident_mib(server.proc.pid)
        client = RetrievalClient(server.retrieve_url, timeout=300.0)
        for start in range(0, len(questions), QUERIES_PER_REQUEST):
            client.retrieve(questions[start:start + QUERIES_PER_REQUEST], topk=AgentConfig.topk)
        client.close()
        searched = resident_mib(server.proc.pid)
        log = server.log()
    startup = float(re.search(r"startup=([0-9.]+)s", log).group(1))
    return {"label": label, "load_s": index_load_seconds(log), "startup_s": startup,
            "anon_loaded": loaded["RssAnon"], "file_loaded": loaded["RssFile"],
            "anon_searched": searched["RssAnon"], "file_searched": searched["RssFile"]}


def synthetic_index(rows: int, work: Path, dim: int = 384, seed: int = 0) -> tuple[Path, list[str]]:
    """A stub corpus of `rows` passages and flags for a PQ32 index + fp16 vectors over random vectors."""
    import faiss

    rng = np.random.default_rng(seed)
    corpus = work / f"synthetic_{rows}.jsonl"
    with corpus.open("w") as f:
        for row in range(rows):
            f.write(json.dumps({"id": str(row), "contents": f'"Passage {row}"\nrandom vector {row}'}) + "\n")
    index = faiss.index_factory(dim, "PQ32", faiss.METRIC_INNER_PRODUCT)
    train = rng.standard_normal((20_000, dim), dtype=np.float32)
    index.train(train / np.linalg.norm(train, axis=1, keepdims=True))
    vectors = np.lib.format.open_memmap(work / f"synthetic_{rows}.npy", "w+", np.float16, (rows, dim))
    for start in range(0, rows, 100_000):
        block = rng.standard_normal((min(100_000, rows - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        index.add(block)
        vectors[start:start + len(block)] = block
    vectors.flush()
    faiss.write_index(index, str(work / f"synthetic_{rows}.faiss"))
    return corpus, ["--index", str(work / f"synthetic_{rows}.faiss"),
                    "--rerank-vectors", str(work / f"synthetic_{rows}.npy")]


def render(rows: list[dict], queries: int) -> str:
    lines = [f"| server | index load s | start-up s | RSS after load MiB (anon + file) "
             f"| RSS after {queries} queries MiB (anon + file) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['load_s']:.3f} | {r['startup_s']:.1f} "
                     f"| {r['anon_loaded']:.0f} + {r['file_loaded']:.0f} "
                     f"| {r['anon_searched']:.0f} + {r['file_searched']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="passages the --server indexes cover")
    parser.add_argument("--questions", type=Path, required=True, help="JSONL with a 'question' field")
    parser.add_argument("--server", action="append", default=[], metavar="LABEL=FLAGS",
                        help="a server to measure: a label, '=', start_retrieval.py flags (repeatable)")
    parser.add_argument("--queries", type=int, default=1000, help="queries sent to each server (default 1000)")
    parser.add_argument("--synthetic-rows", type=int, action="append", default=[],
                        help="also measure a PQ32 + re-rank server over this many random vectors (repeatable)")
    parser.add_argument("--work", type=Path, help="folder for logs and synthetic files (default: a temp dir)")
    parser.add_argument("--encoder-cache", type=Path,
                        help="ONNX export folder shared by the servers (default: WORK/encoder_onnx)")
    args = parser.parse_args(argv)
    pool = [json.loads(line)["question"] for line in args.questions.open() if line.strip()]
    questions = [pool[i % len(pool)] for i in range(args.queries)]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        encoder_cache = args.encoder_cache or work / "encoder_onnx"
        rows = []
        for spec in args.server:
            label, _, flags = spec.partition("=")
            rows.append(measure(label, flags.split(), args.corpus, questions, work, encoder_cache))
            print(rows[-1], flush=True)
        for count in args.synthetic_rows:
            corpus, flags = synthetic_index(count, work)
            rows.append(measure(f"synthetic {count:,} rows, PQ32 + re-rank", flags, corpus, questions, work,
                                encoder_cache))
            print(rows[-1], flush=True)
    print(render(rows, args.queries))


if __name__ == "__main__":
    main()
