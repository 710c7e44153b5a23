"""Settings of the retrieval server: one typed dataclass, filled from YAML and CLI, checked at start-up."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from rag_r1.search.encoder import ENCODER_BACKENDS

RETRIEVERS = ("dense", "bm25")
DEVICES = ("cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass
class ServerConfig:
    retriever: str = "dense"              # dense (FAISS + encoder) | bm25 (bm25s)
    corpus: str | None = None             # passages, .jsonl or .tsv; row i <-> index row i
    index: str | None = None              # dense: FAISS index file; bm25: directory from rag_r1.search.bm25
    encoder: str | None = None            # dense: model name or dir; None = pip-shipped MiniLM
    encoder_backend: str = "torch"        # torch | onnx | onnx-int8 (ONNX Runtime on CPU, exported once)
    encoder_cache: str | None = None      # where ONNX exports are kept; None = encoder_onnx/ beside the index
    query_instruction: str | None = None  # None = the encoder's default (BGE's instruction for bge models)
    max_length: int = 256                 # encoder tokens per query
    topk: int = 3                         # hits per query when a request gives none
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"                   # cuda: encoder on GPU and the index sharded over all GPUs
    cpu_threads: int | None = None        # torch + FAISS CPU threads; 1 avoids spin-waiting on a busy machine
    gpu_fp16: bool = True                 # index vectors and encoder weights in fp16 on GPU
    mmap: bool = True                     # memory-map the index when its type allows
    hnsw_ef_search: int | None = None     # HNSW search breadth (recall vs speed); None = index default
    nprobe: int | None = None             # IVF lists searched per query; None = the value stored in the index
    rerank_vectors: str | None = None     # fp16 .npy of the full vectors: re-rank the index's candidates exactly
    rerank_depth: int = 100               # candidates per query the compressed index hands to the re-rank
    micro_batching: bool = True           # gather queries of concurrent requests into one search
    batch_wait_ms: float = 3.0            # how long a batch waits for more requests after the first
    max_batch_queries: int = 512          # a batch closes once it holds this many queries
    dedupe: bool = True                   # compute each distinct query of a batch once
    cache_size: int = 0                   # LRU entries of (query, topk) -> hits; 0 = no cache
    max_topk: int = 100                   # requests asking for more get 422
    max_queries: int = 256                # queries in one request
    max_query_chars: int = 4096           # characters in one query
    max_body_bytes: int = 1_000_000       # request body size; larger gets 413
    log_level: str = "INFO"

    def validate(self) -> ServerConfig:
        """Raise ValueError naming the first bad key; return self so calls can chain."""
        self._check_types()
        if self.retriever not in RETRIEVERS:
            raise ValueError(f"retriever: must be one of {RETRIEVERS}, got {self.retriever!r}")
        if not self.corpus:
            raise ValueError("corpus: a passage file (.jsonl or .tsv) is required")
        if self.index is None:
            raise ValueError(f"index: required for the {self.retriever} retriever")
        if self.device not in DEVICES:
            raise ValueError(f"device: must be one of {DEVICES}, got {self.device!r}")
        if self.encoder_backend not in ENCODER_BACKENDS:
            raise ValueError(f"encoder_backend: must be one of {ENCODER_BACKENDS}, got {self.encoder_backend!r}")
        if self.encoder_backend != "torch" and self.device != "cpu":
            raise ValueError(f"encoder_backend: {self.encoder_backend} runs on CPU only; use torch with "
                             f"device {self.device}")
        for key in ("topk", "max_topk", "max_queries", "max_query_chars", "max_body_bytes",
                    "max_batch_queries", "max_length", "rerank_depth"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.topk > self.max_topk:
            raise ValueError(f"topk: default {self.topk} exceeds max_topk {self.max_topk}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port: must be in 1..65535, got {self.port}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms: must be >= 0, got {self.batch_wait_ms}")
        for key in ("cpu_threads", "nprobe", "hnsw_ef_search"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.rerank_vectors is not None and self.retriever != "dense":
            raise ValueError("rerank_vectors: re-ranking applies to the dense retriever only")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level: must be one of {LOG_LEVELS}, got {self.log_level!r}")
        if self.cache_size < 0:
            raise ValueError(f"cache_size: must be >= 0, got {self.cache_size}")
        return self

    def _check_types(self) -> None:
        # YAML and hand-written dicts carry no types; check each value against its annotation.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            annotation = str(field.type)
            if value is None and "None" in annotation:
                continue
            base = annotation.split("|")[0].strip()
            if base == "bool":
                ok = isinstance(value, bool)
            elif base == "int":
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif base == "float":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                ok = isinstance(value, str)
            if not ok:
                raise ValueError(f"{field.name}: expected {annotation}, got {value!r}")

def config_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(ServerConfig)]


def load_config(yaml_path: str | Path | None = None, overrides: dict | None = None) -> ServerConfig:
    """Defaults, then the YAML file, then `overrides` (None values skipped); validated."""
    values: dict = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path}: expected a mapping of settings")
        values.update(loaded)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(values) - set(config_keys()))
    if unknown:
        raise ValueError(f"unknown retrieval setting(s) {unknown}; known: {config_keys()}")
    return ServerConfig(**values).validate()
