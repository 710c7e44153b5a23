"""Export a sentence-transformers model to ONNX once (fp32 and an int8 copy), cached by model identity.

The exported graph maps (input_ids, attention_mask) to the pooled, L2-normalized sentence
embedding: whatever pooling the model uses (mean for MiniLM, CLS for BGE) is inside the graph, so
serving it (rag_r1.search.onnx_encoder) needs onnxruntime, tokenizers and numpy, and no torch.

    <cache_dir>/<model name>-<key>/
        model.onnx        the fp32 graph
        model_int8.onnx   the same with int8 weights (one scale per output channel); activations
                          are quantized on the fly (dynamic quantization: no calibration data)
        tokenizer.json    the model's fast tokenizer
        export.json       model, dim, pad token id

The key hashes the model name and, for a local directory, every file's path, size and mtime: an
unchanged model is reused on the next start, a changed one is exported again beside it.
Exporting needs torch, sentence-transformers, onnx and onnxruntime; it takes seconds for MiniLM.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from rag_r1.search.text_encoder import model_label

log = logging.getLogger(__name__)

EXPORT_META = "export.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
# Bumped when the export itself changes, so caches made by an older exporter are not reused.
EXPORT_FORMAT = 1
OPSET = 17


def model_key(model: str | Path) -> str:
    """Hex digest naming one version of a model: its name, plus its files' sizes and mtimes when local."""
    digest = hashlib.sha256(f"{EXPORT_FORMAT}|{model}".encode())
    path = Path(model)
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(f"|{file.relative_to(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def export_dir_name(model: str | Path) -> str:
    return f"{model_label(model)}-{model_key(model)}"


def cached_onnx_export(model: str | Path, cache_dir: str | Path) -> Path:
    """The export directory of `model` under `cache_dir`, exported now if it is not there yet."""
    final = Path(cache_dir) / export_dir_name(model)
    if (final / EXPORT_META).is_file():
        log.info("ONNX encoder export found in %s", final)
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RuntimeError(f"cannot create the ONNX encoder cache {final.parent}: {err} "
                           "(choose a writable one with --encoder-cache)") from err
    # Export into a private folder and rename it: a reader never sees a half-written export, and
    # of two servers exporting at once, the second to finish keeps the first one's folder.
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    log.info("exporting encoder %s to ONNX (once) in %s", model, final)
    export_onnx(model, tmp)
    try:
        os.replace(tmp, final)
    except OSError:
        if not (final / EXPORT_META).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("ONNX export and int8 quantization took %.1fs", time.perf_counter() - start)
    return final


@contextmanager
def _root_log_level(level: int):
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(level, previous))
    try:
        yield
    finally:
        root.setLevel(previous)


def export_onnx(model: str | Path, out_dir: str | Path) -> Path:
    """Write the fp32 graph, its int8 copy, the tokenizer and export.json to `out_dir`."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from sentence_transformers import SentenceTransformer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Eager attention traces to plain ONNX ops; the fused kernels do not all export.
    st_model = SentenceTransformer(str(model), device="cpu", model_kwargs={"attn_implementation": "eager"})
    st_model.eval()
    tokenizer = st_model.tokenizer
    example = tokenizer(["an example query", "a second, longer example passage"], padding=True,
                        return_tensors="pt")
    uses_token_types = "token_type_ids" in example

    class PooledEmbedding(torch.nn.Module):
        """The whole sentence-transformers pipeline, then L2 normalization, as one traceable module."""

        def __init__(self):
            super().__init__()
            self.st_model = st_model

        def forward(self, input_ids, attention_mask):
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            if uses_token_types:  # single-segment text: BERT's segment ids are all 0
                features["token_type_ids"] = torch.zeros_like(input_ids)
            embedding = self.st_model(features)["sentence_embedding"]
            return torch.nn.functional.normalize(embedding, dim=-1)

    graph = PooledEmbedding()
    # The tracer warns that the mask-length checks of transformers and of the pooling become
    # constants: they compare the mask with the ids, which always have the same length here.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph, (example["input_ids"], example["attention_mask"]), str(out_dir / FP32_FILE),
            dynamo=False, opset_version=OPSET, input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                          "embedding": {0: "batch"}},
        )
    # Per-channel scales: one scale per weight matrix lost too much (cosine to fp32 down to .93 on
    # MiniLM queries); per output channel it stays above .98.
    with _root_log_level(logging.ERROR):  # the quantizer logs advice and every tensor it skips
        quantize_dynamic(str(out_dir / FP32_FILE), str(out_dir / INT8_FILE), weight_type=QuantType.QInt8,
                         per_channel=True)
    tokenizer.backend_tokenizer.save(str(out_dir / TOKENIZER_FILE))
    get_dim = getattr(st_model, "get_embedding_dimension", None) or st_model.get_sentence_embedding_dimension
    meta = {"model": str(model), "dim": int(get_dim()), "pad_id": int(tokenizer.pad_token_id or 0),
            "format": EXPORT_FORMAT}
    (out_dir / EXPORT_META).write_text(json.dumps(meta, indent=1) + "\n")
    return out_dir
