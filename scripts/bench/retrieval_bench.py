"""Retrieval server throughput and latency: our serving path against one request at a time.

    python -m scripts.bench.retrieval_bench --corpus ../shared/data/hotpotqa_closed/corpus.jsonl \
        --questions ../shared/data/hotpotqa_closed/train.jsonl --index flat.faiss --levels 16

Starts two servers on loopback (start_retrieval.py in subprocesses; cache off in both):
- "ours": micro-batching and dedupe on, the query encoder of `--encoder-backend` (default
  onnx-int8), plus any `--ours-args`;
- "baseline": one request at a time (`--no-micro-batching --no-dedupe`) with the encoder of
  `--baseline-encoder-backend` (default torch): how Search-R1's server works.
At each concurrency level, that many client threads send a fixed, seeded list of requests of 1-3
queries drawn from the question pool (a pool smaller than the request count, so some queries
repeat, as when GRPO samples several rollouts per prompt); the two servers take turns on slices of
that list so that load from other programs hits both alike. Prints queries/s, p50/p99 request
latency, how many queries the retriever computed in how many calls, and the ratios.
Without --index, a flat FAISS index of the corpus (encoder: --encoder, default MiniLM) or, with
--retriever bm25, a BM25 index is built and cached under .cache/retrieval_bench/.
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

from rag_r1.llm_agent.config import AgentConfig
from rag_r1.search.client import RetrievalClient
from rag_r1.search.encoder import ENCODER_BACKENDS
from rag_r1.search.launcher import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "retrieval_bench"
SHARED_DATA = ROOT / ".." / "shared" / "data"


@dataclass
class LevelResult:
    concurrency: int
    requests: int = 0
    queries: int = 0
    seconds: float = 0.0
    searched: int = 0   # queries the retriever computed (after dedupe)
    batches: int = 0    # retriever calls
    cpu_seconds: float = 0.0  # user + system time the server process spent
    latencies: list[float] = field(default_factory=list)

    @property
    def qps(self) -> float:
        return self.queries / self.seconds

    @property
    def cpu_ms_per_query(self) -> float:
        return self.cpu_seconds * 1000 / self.queries

    def latency_ms(self, percentile: float) -> float:
        return float(np.percentile(self.latencies, percentile) * 1000)


def load_questions(path: Path, pool: int) -> list[str]:
    questions = []
    with path.open() as f:
        for line in f:
            if line.strip():
                questions.append(json.loads(line)["question"])
    if not questions:
        raise SystemExit(f"no questions in {path}")
    return questions[:pool]


def make_requests(questions: list[str], n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [rng.choices(questions, k=rng.randint(1, 3)) for _ in range(n)]


def build_flat_index(corpus: Path, encoder_name: str | None) -> Path:
    import faiss

    from rag_r1.search.corpus import iter_passages
    from rag_r1.search.encoder import Encoder, default_minilm_path

    encoder_path = encoder_name or str(default_minilm_path())
    path = CACHE / f"{corpus.parent.name}_{corpus.stem}_{Path(encoder_path).name}_flat.faiss"
    if path.is_file():
        return path
    texts = [p["contents"] for p in iter_passages(corpus)]
    vectors = Encoder(encoder_path).encode_passages(texts, show_progress=True)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))
    return path


def build_bm25_index(corpus: Path) -> Path:
    from rag_r1.search.bm25 import META_FILE, build_bm25

    path = CACHE / f"{corpus.parent.name}_{corpus.stem}_bm25"
    return path if (path / META_FILE).is_file() else build_bm25(corpus, path)


def start_server(args: list[str], log_path: Path, timeout: float) -> tuple[subprocess.Popen, str]:
    server = ServerProcess(args, log_path)
    try:
        server.start(timeout)
    except RuntimeError as err:
        raise SystemExit(str(err)) from err
    return server.proc, server.retrieve_url


def server_stats(url: str) -> dict:
    return httpx.get(url.removesuffix("/retrieve") + "/stats", timeout=30).json()


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def run_slice(url: str, pid: int, requests: list[list[str]], concurrency: int, topk: int,
              into: LevelResult) -> None:
    """Send `requests` from `concurrency` threads and add the measurements to `into`."""
    before = server_stats(url)
    cpu_before = cpu_seconds(pid)
    clients = [RetrievalClient(url, timeout=120.0, retries=0) for _ in range(concurrency)]
    latencies = np.zeros(len(requests))

    def worker(w: int) -> None:
        # thread w sends requests w, w + concurrency, ... one after another
        for i in range(w, len(requests), concurrency):
            start = time.perf_counter()
            clients[w].retrieve(requests[i], topk=topk)
            latencies[i] = time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    into.seconds += time.perf_counter() - start
    into.cpu_seconds += cpu_seconds(pid) - cpu_before
    for client in clients:
        client.close()
    after = server_stats(url)
    into.requests += len(requests)
    into.queries += sum(map(len, requests))
    into.latencies.extend(latencies.tolist())
    into.searched += after["searched_queries"] - before["searched_queries"]
    into.batches += after["batches"] - before["batches"]


def run_level(urls: dict[str, str], pids: dict[str, int], requests: list[list[str]], concurrency: int,
              topk: int, rounds: int) -> dict[str, LevelResult]:
    """Both servers take turns on slices of the requests (AB, BA, AB, ...), so the load other
    programs put on the machine drifts over both alike."""
    results = {name: LevelResult(concurrency) for name in urls}
    size = -(-len(requests) // rounds)
    for r in range(rounds):
        part = requests[r * size:(r + 1) * size]
        order = list(urls) if r % 2 == 0 else list(urls)[::-1]
        for name in order:
            run_slice(urls[name], pids[name], part, concurrency, topk, results[name])
    return results


def print_level(name: str, result: LevelResult) -> None:
    print(f"{name:>10} c={result.concurrency:<3} {result.qps:8.1f} q/s  p50 {result.latency_ms(50):7.1f} ms  "
          f"p99 {result.latency_ms(99):7.1f} ms  ({result.requests} requests, {result.queries} queries, "
          f"{result.searched} searched in {result.batches} batches, {result.seconds:.1f}s, "
          f"server CPU {result.cpu_ms_per_query:.1f} ms/query)", flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=SHARED_DATA / "wiki18_1k" / "corpus.jsonl")
    p.add_argument("--questions", type=Path, default=SHARED_DATA / "hotpotqa_closed" / "test.jsonl")
    p.add_argument("--retriever", choices=["dense", "bm25"], default="dense")
    p.add_argument("--index", type=Path,
                   help="index of the corpus (default: build a flat FAISS / a BM25 index and cache it)")
    p.add_argument("--encoder", help="encoder of the index (default: pip-shipped MiniLM)")
    p.add_argument("--levels", default="1,4,16", help="comma-separated concurrency levels")
    p.add_argument("--requests", type=int, default=240, help="requests per level")
    p.add_argument("--pool", type=int, default=97, help="distinct questions requests draw from")
    p.add_argument("--topk", type=int, default=AgentConfig.topk, help="passages per query (default: the agent's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=4, help="slices per level the two servers alternate on")
    p.add_argument("--cpu-threads", type=int, help="the servers' encoder/FAISS threads (same for both)")
    p.add_argument("--encoder-backend", choices=ENCODER_BACKENDS, default="onnx-int8",
                   help="query encoder of our server (default onnx-int8)")
    p.add_argument("--baseline-encoder-backend", choices=ENCODER_BACKENDS, default="torch",
                   help="query encoder of the one-request-at-a-time baseline (default torch)")
    p.add_argument("--ours-args", default="", help="more start_retrieval.py flags for our server only")
    p.add_argument("--start-timeout", type=float, default=600.0,
                   help="seconds a server may take to start (default 600; torch imports slowly on a busy machine)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    for path in (args.corpus, args.questions):
        if not path.is_file():
            raise SystemExit(f"file not found: {path}")
    if args.index is not None:
        index = args.index
    elif args.retriever == "bm25":
        index = build_bm25_index(args.corpus)
    else:
        index = build_flat_index(args.corpus, args.encoder)
    levels = [int(x) for x in args.levels.split(",")]
    requests = make_requests(load_questions(args.questions, args.pool), args.requests, args.seed)
    base = ["--retriever", args.retriever, "--corpus", str(args.corpus), "--index", str(index),
            "--cache-size", "0"]
    if args.encoder:
        base += ["--encoder", args.encoder]
    if args.cpu_threads:
        base += ["--cpu-threads", str(args.cpu_threads)]
    print(f"{args.retriever} | corpus {args.corpus} | index {index} | {args.requests} requests of 1-3 "
          f"queries per level, pool {args.pool} questions, topk {args.topk}", flush=True)
    dense = args.retriever == "dense"
    servers = {
        "ours": base + (["--encoder-backend", args.encoder_backend] if dense else []) + shlex.split(args.ours_args),
        "baseline": base + (["--encoder-backend", args.baseline_encoder_backend] if dense else [])
        + ["--no-micro-batching", "--no-dedupe"],
    }
    procs = []
    with tempfile.TemporaryDirectory() as log_dir:
        try:
            urls, pids = {}, {}
            for name, server_args in servers.items():
                proc, urls[name] = start_server(server_args, Path(log_dir) / f"{name}.log", args.start_timeout)
                procs.append(proc)
                pids[name] = proc.pid
                run_slice(urls[name], proc.pid, requests[:8], 4, args.topk, LevelResult(4))  # warm-up
            fast, slow = [], []
            for level in levels:
                results = run_level(urls, pids, requests, level, args.topk, args.rounds)
                for name, result in results.items():
                    print_level(name, result)
                fast.append(results["ours"])
                slow.append(results["baseline"])
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
    # CPU time per query is what a dedicated machine's throughput follows; wall-clock q/s on a
    # shared machine also carries everyone else's load.
    print(f"\nours: {' '.join(servers['ours'][len(base):])}\nbaseline: {' '.join(servers['baseline'][len(base):])}")
    print("concurrency     ours q/s   baseline q/s  ratio  p50 ms (o/b)      p99 ms (o/b)  p99 ratio"
          "  CPU ms/query (o/b)  CPU ratio")
    for f, s in zip(fast, slow, strict=True):
        p50 = f"{f.latency_ms(50):6.1f}/{s.latency_ms(50):<8.1f}"
        p99 = f"{f.latency_ms(99):6.1f}/{s.latency_ms(99):.1f}"
        cpu = f"{f.cpu_ms_per_query:6.1f}/{s.cpu_ms_per_query:<6.1f}"
        print(f"{f.concurrency:>11}  {f.qps:11.1f}  {s.qps:13.1f}  {f.qps / s.qps:5.2f}x  {p50}  {p99:<12}"
              f"  {f.latency_ms(99) / s.latency_ms(99):8.2f}x  {cpu:<18}  {s.cpu_ms_per_query / f.cpu_ms_per_query:5.2f}x")


if __name__ == "__main__":
    main()
