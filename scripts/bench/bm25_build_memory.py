"""Peak memory of a BM25 build: bm25s's in-memory index() against our chunked build.

    python -m scripts.bench.bm25_build_memory --corpus .cache/bench/kilt_sample_100w.jsonl [--chunk-size 10000]

Each build runs in a fresh process and reports its peak resident memory (ru_maxrss); a process that
only imports the same modules gives the baseline. bm25s's build keeps every token of the corpus in
Python lists, so its peak grows with the corpus: its slope per million passages, measured here, is
scaled to KILT's 29M. The chunked build is run on the whole corpus and on its first half: its peak
is one chunk plus the vocabulary (which grows slower than the corpus) plus 8 bytes per passage and
20 per distinct term, so the two peaks stay close.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KILT_PASSAGES = 29_000_000


def run_build(kind: str, corpus: Path, out: Path, chunk_size: int) -> dict:
    """In this process: build one way, return peak RSS (MiB), seconds and vocabulary size."""
    import bm25s

    from rag_r1.search.bm25 import build_bm25, tokenize
    from rag_r1.search.corpus import iter_passages

    start = time.perf_counter()
    if kind == "bm25s in memory":
        model = bm25s.BM25()
        model.index(tokenize([p["contents"] for p in iter_passages(corpus)]), show_progress=False)
        model.save(str(out))
    elif kind == "chunked":
        build_bm25(corpus, out, chunk_size=chunk_size, show_progress=False)
    seconds = time.perf_counter() - start
    vocab = out / "vocab.index.json"
    return {"kind": kind, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds": seconds, "terms": len(json.loads(vocab.read_text())) if vocab.is_file() else 0}


def child(kind: str, corpus: Path, out: Path, chunk_size: int) -> dict:
    done = subprocess.run([sys.executable, "-m", "scripts.bench.bm25_build_memory", "--corpus", str(corpus),
                           "--chunk-size", str(chunk_size), "--run", kind, "--out", str(out)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--chunk-size", type=int, default=10_000, help="passages per chunk (default 10000)")
    parser.add_argument("--run", choices=["imports only", "bm25s in memory", "chunked"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        print(json.dumps(run_build(args.run, args.corpus, args.out, args.chunk_size)))
        return

    from rag_r1.search.corpus import count_passages

    passages = count_passages(args.corpus)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        half = tmp / "first_half.jsonl"
        with args.corpus.open() as source, half.open("w") as sink:
            sink.writelines(line for _, line in zip(range(passages // 2), source))
        runs = [("imports only", args.corpus, passages), ("bm25s in memory", args.corpus, passages),
                ("chunked", half, passages // 2), ("chunked", args.corpus, passages)]
        results = []
        for number, (kind, corpus, count) in enumerate(runs):
            results.append(child(kind, corpus, tmp / f"index_{number}", args.chunk_size) | {"passages": count})
            print(results[-1], flush=True)
    base = results[0]["peak_mib"]
    print(f"\n{args.corpus}; chunk size {args.chunk_size:,}; baseline (imports) {base:.0f} MiB")
    print("| build | passages | distinct terms | peak RSS MiB | above baseline MiB | s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results[1:]:
        print(f"| {r['kind']} | {r['passages']:,} | {r['terms']:,} | {r['peak_mib']:.0f} "
              f"| {r['peak_mib'] - base:.0f} | {r['seconds']:.0f} |")
    slope = (results[1]["peak_mib"] - base) / passages * 1e6 / 1024
    print(f"bm25s in memory: {slope:.2f} GiB per million passages above the baseline, "
          f"{slope * KILT_PASSAGES / 1e6:.0f} GiB for KILT's 29M")

if __name__ == "__main__":
    main()
