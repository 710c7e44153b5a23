"""Encoder on ONNX Runtime over an export made by rag_r1.search.onnx_export (no torch at run time).

Texts are tokenized together, sorted by token count and cut into batches, so each batch pads only
to its own longest text (short queries are not padded to a long one's length); results come back
in input order. The int8 graph runs one text at a time: dynamic quantization picks one activation
scale per batch, so in a batch a text's vector would depend on its neighbours (by up to .02 per
component on MiniLM), and on CPU a batch of one is no slower per text.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rag_r1.search.onnx_export import EXPORT_META, FP32_FILE, INT8_FILE, TOKENIZER_FILE
from rag_r1.search.text_encoder import TextEncoder


class OnnxEncoder(TextEncoder):
    """`int8` picks the quantized graph; `threads` is ONNX Runtime's intra-op thread count.

    One thread by default: a short query gains little from more, and on a busy 2-core machine two
    ONNX Runtime threads spin-waiting for each other cost 3x the CPU time per query (9.4 against
    3.0 ms for MiniLM int8, measured under load) and more wall time too."""

    def __init__(self, export_dir: str | Path, int8: bool = True, model_name: str | Path | None = None,
                 query_instruction: str | None = None, passage_instruction: str = "",
                 max_length: int = 256, batch_size: int = 64, threads: int | None = None):
        import onnxruntime
        from tokenizers import Tokenizer

        export_dir = Path(export_dir)
        meta_path = export_dir / EXPORT_META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: {export_dir} is not an ONNX encoder export")
        meta = json.loads(meta_path.read_text())
        super().__init__(model_name or meta["model"], query_instruction, passage_instruction, max_length,
                         batch_size)
        self.dim = int(meta["dim"])
        self.graph_path = export_dir / (INT8_FILE if int8 else FP32_FILE)
        self._rows_per_run = 1 if int8 else batch_size
        self._pad_id = int(meta["pad_id"])
        self._tokenizer = Tokenizer.from_file(str(export_dir / TOKENIZER_FILE))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = threads or 1
        self._session = onnxruntime.InferenceSession(str(self.graph_path), options,
                                                     providers=["CPUExecutionProvider"])

    def _embed(self, texts: list[str], show_progress: bool) -> np.ndarray:
        token_ids = [encoding.ids for encoding in self._tokenizer.encode_batch(texts)]
        lengths = np.array([len(ids) for ids in token_ids])
        order = np.argsort(lengths, kind="stable")
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), self._rows_per_run)
        for start in tqdm(starts, desc="encode", unit="batch", disable=not show_progress):
            rows = order[start:start + self._rows_per_run]
            ids = np.full((len(rows), int(lengths[rows].max())), self._pad_id, dtype=np.int64)
            mask = np.zeros_like(ids)
            for i, row in enumerate(rows):
                ids[i, :lengths[row]] = token_ids[row]
                mask[i, :lengths[row]] = 1
            vectors[rows] = self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return vectors
