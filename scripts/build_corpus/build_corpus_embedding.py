"""Embed a passage corpus into float16 .npy shards (input of build_corpus_index).

    # all 10 shards, one after another (GPU when present)
    python -m scripts.build_corpus.build_corpus_embedding --corpus kilt_100w.jsonl --out .cache/emb/bge
    # one shard per process / GPU
    CUDA_VISIBLE_DEVICES=3 python -m scripts.build_corpus.build_corpus_embedding \
        --corpus kilt_100w.jsonl --out .cache/emb/bge --shard-id 3
    # CPU, the pip-shipped MiniLM
    python -m scripts.build_corpus.build_corpus_embedding --corpus c.jsonl --out .cache/emb/minilm --model minilm

The corpus is JSONL `{"id", "contents"}` or the seed's TSV `id<TAB>contents`; the text embedded is
`passage_instruction + contents` (title line included, as Search-R1 and FlashRAG embed it).
Vectors are L2-normalized, so inner product is cosine similarity.

Resumable: each shard is written in chunks of `--chunk-size` passages (`shard_XX.chunks/`); a
killed run started again skips finished shards and finished chunks. The output layout is described
in `scripts/build_corpus/embedding_store.py`.
"""
from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a plain file: make the repo's `scripts` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
from tqdm import tqdm

from rag_r1.search.corpus import count_passages, iter_passages
from rag_r1.search.encoder import ENCODER_BACKENDS, default_minilm_path, load_encoder
from rag_r1.search.text_encoder import TextEncoder, default_query_instruction
from scripts.build_corpus.embedding_store import (
    chunk_dir, chunk_path, read_meta, shard_bounds, shard_path, write_meta,
)

DEFAULT_MODEL = "BAAI/bge-large-en-v1.5"
# Settings that must not change between the runs that fill one embedding directory.
FIXED_META_KEYS = ("num_passages", "num_shards", "chunk_size", "model", "passage_instruction", "max_length")


def resolve_model(model: str) -> str:
    """`minilm` names the pip-shipped all-MiniLM-L6-v2; anything else is a hub name or a directory."""
    return str(default_minilm_path()) if model == "minilm" else model


def prepare_meta(out_dir: Path, meta: dict) -> dict:
    """Write meta.json, or check that an existing one was made with the same settings."""
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        existing = read_meta(out_dir)
    except FileNotFoundError:
        write_meta(out_dir, meta)
        return meta
    for key in FIXED_META_KEYS:
        if existing.get(key) != meta.get(key):
            raise ValueError(f"{out_dir}/meta.json has {key}={existing.get(key)!r} but this run uses "
                             f"{meta.get(key)!r}: use another --out directory or delete the old one")
    return existing


def _finished_chunks(out_dir: Path, shard_id: int, chunk_size: int, shard_rows: int) -> int:
    """How many leading chunks of a shard are complete on disk."""
    done = 0
    while chunk_path(out_dir, shard_id, done).is_file() and done * chunk_size < shard_rows:
        done += 1
    return done


def embed_shard(corpus: Path, out_dir: Path, shard_id: int, encoder: Encoder, meta: dict,
                show_progress: bool = True) -> Path:
    """Embed one shard (resuming from its finished chunks) and return the shard file."""
    final = shard_path(out_dir, shard_id)
    if final.is_file():
        return final
    start, end = shard_bounds(meta["num_passages"], meta["num_shards"], shard_id)
    chunk_size = meta["chunk_size"]
    chunks = chunk_dir(out_dir, shard_id)
    chunks.mkdir(parents=True, exist_ok=True)
    done = _finished_chunks(out_dir, shard_id, chunk_size, end - start)
    first_row = start + done * chunk_size

    rows = itertools.islice(iter_passages(corpus), first_row, end)
    with tqdm(total=end - start, initial=first_row - start, unit="passage",
              desc=f"shard {shard_id}", disable=not show_progress) as progress:
        for index in itertools.count(done):
            batch = [row["contents"] for row in itertools.islice(rows, chunk_size)]
            if not batch:
                break
            vectors = encoder.encode_passages(batch).astype(np.float16)
            # Write then rename, so a chunk file on disk is always complete.
            final_chunk = chunk_path(out_dir, shard_id, index)
            tmp = final_chunk.with_suffix(".tmp.npy")
            np.save(tmp, vectors)
            os.replace(tmp, final_chunk)
            progress.update(len(batch))

    parts = [np.load(chunk_path(out_dir, shard_id, i))
             for i in range(_finished_chunks(out_dir, shard_id, chunk_size, end - start))]
    vectors = np.concatenate(parts) if parts else np.zeros((0, meta["dim"]), dtype=np.float16)
    if len(vectors) != end - start:
        raise RuntimeError(f"shard {shard_id}: {len(vectors)} vectors for {end - start} passages "
                           f"(corpus {corpus} changed during the run?)")
    tmp = final.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, final)
    shutil.rmtree(chunks)
    return final


def build_embeddings(corpus: Path, out_dir: Path, model: str = DEFAULT_MODEL, num_shards: int = 10,
                     shard_ids: list[int] | None = None, device: str = "auto", batch_size: int = 64,
                     max_length: int = 256, passage_instruction: str = "",
                     query_instruction: str | None = None, chunk_size: int = 4096, fp16: bool = False,
                     show_progress: bool = True, encoder: TextEncoder | None = None,
                     encoder_backend: str = "torch") -> list[Path]:
    """Embed the requested shards (all when `shard_ids` is None); return their files.

    `encoder`, when given, is used instead of loading `model` again (its settings win over the
    encoder arguments; `model` is still what meta.json records). The ONNX backends keep their
    export in `out_dir/encoder_onnx/`."""
    corpus, out_dir = Path(corpus), Path(out_dir)
    if encoder is None:
        encoder_device = "cpu"
        if encoder_backend == "torch":  # the ONNX backends never import torch
            from verl.utils.distributed import resolve_device

            encoder_device = resolve_device(device)
        encoder = load_encoder(resolve_model(model), backend=encoder_backend, cache_dir=out_dir / "encoder_onnx",
                               device=encoder_device,
                               query_instruction=query_instruction, passage_instruction=passage_instruction,
                               max_length=max_length, batch_size=batch_size, fp16=fp16,
                               threads=os.cpu_count())  # an embedding run has the machine to itself
    meta = prepare_meta(out_dir, {
        "corpus": str(corpus.resolve()),
        "num_passages": count_passages(corpus),
        "num_shards": num_shards,
        "chunk_size": chunk_size,
        "model": model,
        "encoder_backend": encoder_backend,
        "passage_instruction": encoder.passage_instruction,
        # Recorded so the server encodes queries the way this model expects.
        "query_instruction": encoder.query_instruction,
        "max_length": max_length,
        "dim": encoder.dim,
        "dtype": "float16",
    })
    wanted = range(num_shards) if shard_ids is None else shard_ids
    return [embed_shard(corpus, out_dir, i, encoder, meta, show_progress) for i in wanted]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="passages: JSONL or TSV id<TAB>contents")
    parser.add_argument("--out", type=Path, required=True, help="embedding directory (created)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"sentence-transformers hub name or local dir, or 'minilm' for the "
                             f"pip-shipped all-MiniLM-L6-v2 (default {DEFAULT_MODEL})")
    parser.add_argument("--num-shards", type=int, default=10, help="shards of the corpus (default 10)")
    parser.add_argument("--shard-id", type=int, action="append",
                        help="embed only this shard (repeatable); default: every shard in turn")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (cuda when present)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoder batch size (default 64)")
    parser.add_argument("--max-length", type=int, default=256, help="max tokens a passage (default 256)")
    parser.add_argument("--passage-instruction", default="", help="prefix for passages (default none)")
    parser.add_argument("--query-instruction", default=None,
                        help="prefix for queries, recorded in meta.json for the server "
                             "(default: the model's own, e.g. BGE's retrieval instruction)")
    parser.add_argument("--chunk-size", type=int, default=4096,
                        help="passages between saved partial results (default 4096)")
    parser.add_argument("--fp16", action="store_true", help="half-precision encoder weights (GPU only)")
    parser.add_argument("--encoder-backend", choices=ENCODER_BACKENDS, default="torch",
                        help="torch (default; GPU when present), or onnx on CPU: the same vectors within "
                             "1e-6, several times faster there; onnx-int8 is faster still but less exact")
    args = parser.parse_args(argv)
    if args.num_shards < 1 or args.chunk_size < 1:
        parser.error("--num-shards and --chunk-size must be at least 1")
    for shard_id in args.shard_id or []:
        if not 0 <= shard_id < args.num_shards:
            parser.error(f"--shard-id {shard_id} is outside 0..{args.num_shards - 1}")
    if args.query_instruction is None:
        args.query_instruction = default_query_instruction(args.model)
    paths = build_embeddings(args.corpus, args.out, args.model, args.num_shards, args.shard_id,
                             args.device, args.batch_size, args.max_length, args.passage_instruction,
                             args.query_instruction, args.chunk_size, args.fp16,
                             encoder_backend=args.encoder_backend)
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
