"""Start the retrieval server (Search-R1's POST /retrieve contract; see docs/retrieval.md).

    python start_retrieval.py --retriever dense --corpus corpus.jsonl --index index.faiss \
        --encoder BAAI/bge-large-en-v1.5 [--topk 3] [--host 127.0.0.1] [--port 8000] [--device cpu|cuda]
    python start_retrieval.py --retriever bm25 --corpus corpus.jsonl --index bm25_dir
    python start_retrieval.py --config retrieval.yaml [--port 8001]   # flags override the file

Prints one line starting with "RETRIEVAL READY" once it accepts requests. A missing file or a
corpus/index size mismatch stops start-up with one message naming it.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import uvicorn

from rag_r1.search.config import ServerConfig, load_config
from rag_r1.search.corpus import Corpus, load_corpus
from rag_r1.search.encoder import ENCODER_BACKENDS
from rag_r1.search.engine import SearchEngine
from rag_r1.search.retriever import Retriever
from rag_r1.search.server import create_app

log = logging.getLogger("start_retrieval")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Every default is None so only flags actually given override the config file.
    p.add_argument("--config", help="YAML file with any ServerConfig keys")
    p.add_argument("--retriever", choices=["dense", "bm25"])
    p.add_argument("--corpus", help="passages, .jsonl or .tsv")
    p.add_argument("--index", help="dense: FAISS index file; bm25: index directory")
    p.add_argument("--encoder", help="sentence-transformers name or local dir (dense)")
    p.add_argument("--encoder-backend", dest="encoder_backend", choices=list(ENCODER_BACKENDS),
                   help="query encoder runtime: torch (default), onnx, onnx-int8 (fastest on CPU)")
    p.add_argument("--encoder-cache", dest="encoder_cache",
                   help="folder of the ONNX exports (default: encoder_onnx/ beside the index)")
    p.add_argument("--query-instruction", dest="query_instruction")
    p.add_argument("--topk", type=int, help="hits per query when a request gives no topk")
    p.add_argument("--max-topk", dest="max_topk", type=int)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--cpu-threads", dest="cpu_threads", type=int,
                   help="torch and FAISS CPU threads (default: their own; 1 on an oversubscribed machine)")
    p.add_argument("--cache-size", dest="cache_size", type=int, help="LRU entries; 0 turns the cache off")
    p.add_argument("--batch-wait-ms", dest="batch_wait_ms", type=float)
    p.add_argument("--no-micro-batching", dest="micro_batching", action="store_const", const=False,
                   help="search every request on its own (benchmark baseline)")
    p.add_argument("--no-dedupe", dest="dedupe", action="store_const", const=False,
                   help="compute repeated queries every time (benchmark baseline)")
    p.add_argument("--nprobe", type=int, help="IVF lists searched per query (default: stored in the index)")
    p.add_argument("--rerank-vectors", dest="rerank_vectors",
                   help="fp16 .npy of the full vectors (build_corpus_index --rerank-vectors): re-rank a "
                        "compressed index's candidates exactly against them, memory-mapped")
    p.add_argument("--rerank-depth", dest="rerank_depth", type=int,
                   help="candidates per query re-ranked (default 100)")
    p.add_argument("--no-mmap", dest="mmap", action="store_const", const=False,
                   help="read the whole index into RAM instead of memory-mapping it")
    return p.parse_args(argv)


def check_size(index_size: int, corpus: Corpus, config: ServerConfig) -> None:
    if index_size != len(corpus):
        raise ValueError(
            f"corpus {config.corpus} has {len(corpus)} passages but the {config.retriever} index "
            f"{config.index} holds {index_size}: they must be built from the same file"
        )


def build_retriever(config: ServerConfig, corpus: Corpus) -> Retriever:
    """The configured retriever; the size check runs before the (slow) encoder loads."""
    if config.retriever == "bm25":
        from rag_r1.search.bm25 import BM25Retriever

        retriever = BM25Retriever(config.index, mmap=config.mmap)
        check_size(retriever.size, corpus, config)
        return retriever
    from rag_r1.search.dense import DenseRetriever, load_index, set_search_params, shard_to_gpus
    from rag_r1.search.encoder import default_minilm_path, load_encoder
    from rag_r1.search.rerank import RerankedIndex, open_vectors

    if config.cpu_threads is not None:
        import faiss

        faiss.omp_set_num_threads(config.cpu_threads)
        if config.encoder_backend == "torch":  # the ONNX backends never import torch
            import torch

            torch.set_num_threads(config.cpu_threads)
    index = load_index(config.index, mmap=config.mmap)
    check_size(index.ntotal, corpus, config)
    set_search_params(index, nprobe=config.nprobe, ef_search=config.hnsw_ef_search)
    if config.device == "cuda":
        index = shard_to_gpus(index, fp16=config.gpu_fp16)
    if config.rerank_vectors is not None:
        index = RerankedIndex(index, open_vectors(config.rerank_vectors), config.rerank_depth)
    encoder = load_encoder(
        config.encoder or default_minilm_path(), backend=config.encoder_backend,
        cache_dir=config.encoder_cache or Path(config.index).resolve().parent / "encoder_onnx",
        device=config.device, query_instruction=config.query_instruction, max_length=config.max_length,
        fp16=config.gpu_fp16 and config.device == "cuda", threads=config.cpu_threads,
    )
    return DenseRetriever(index, encoder)


class AnnouncingServer(uvicorn.Server):
    """uvicorn server that prints the ready line after its socket is bound, not before."""

    ready_line = ""

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(self.ready_line, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = vars(parse_args(argv))
    config_file = args.pop("config")
    try:
        config = load_config(config_file, overrides=args)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"start_retrieval: bad configuration: {err}")
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    start = time.perf_counter()
    try:
        corpus = load_corpus(config.corpus)
        log.info("corpus %s: %d passages, row offsets read in %.2fs",
                 config.corpus, len(corpus), time.perf_counter() - start)
        retriever = build_retriever(config, corpus)
        retriever.search(["warm-up query"], 1)  # first call pays lazy initialisation, not a client
    except (ValueError, OSError, RuntimeError) as err:
        sys.exit(f"start_retrieval: cannot start: {err}")
    load_s = time.perf_counter() - start

    engine = SearchEngine(
        retriever, micro_batching=config.micro_batching, dedupe=config.dedupe,
        cache_size=config.cache_size, batch_wait_ms=config.batch_wait_ms,
        max_batch_queries=config.max_batch_queries,
    )
    app = create_app(config, engine, corpus)
    server = AnnouncingServer(uvicorn.Config(
        app, host=config.host, port=config.port, log_level="warning", access_log=False))
    backend = f"encoder_backend={config.encoder_backend} " if config.retriever == "dense" else ""
    server.ready_line = (
        f"RETRIEVAL READY http://{config.host}:{config.port} retriever={config.retriever} "
        f"passages={len(corpus)} {backend}micro_batching={config.micro_batching} dedupe={config.dedupe} "
        f"cache={config.cache_size} startup={load_s:.1f}s"
    )
    server.run()


if __name__ == "__main__":
    main()
