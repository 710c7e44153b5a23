"""What every text encoder backend shares: the instruction prefixes and the query/passage entry points.

Models trained with instructions (BGE, E5) want a prefix on queries and/or passages; the prefixes
are configuration here so the index build and the server always agree. Imports run one way:
rag_r1.search.encoder (the torch `Encoder`, `load_encoder`) imports onnx_encoder and onnx_export,
and all three import this module, which imports none of them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "


def model_label(model: str | Path) -> str:
    """A readable name: the directory's name, or its parent's for the pip packages' ".../model"."""
    path = Path(model)
    return path.parent.name if path.name == "model" else path.name


def default_query_instruction(model: str) -> str:
    """The query prefix a model was trained with ('' when it needs none)."""
    return BGE_QUERY_INSTRUCTION if "bge" in str(model).lower() else ""


class TextEncoder:
    """What every backend shares: instruction prefixes and the query/passage entry points.

    Subclasses set `self.dim` and implement `_embed(texts, show_progress) -> [n, dim] float32`
    (unit L2 norm).
    """

    dim: int

    def __init__(self, model: str | Path, query_instruction: str | None, passage_instruction: str,
                 max_length: int, batch_size: int):
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name = str(model)
        self.query_instruction = (
            default_query_instruction(self.model_name) if query_instruction is None else query_instruction
        )
        self.passage_instruction = passage_instruction
        self.max_length = max_length
        self.batch_size = batch_size

    def _embed(self, texts: list[str], show_progress: bool) -> np.ndarray:
        raise NotImplementedError

    def _encode(self, texts: list[str], prefix: str, show_progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._embed([prefix + t for t in texts], show_progress)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """[n, dim] float32, unit L2 norm, with the query instruction prepended."""
        return self._encode(list(queries), self.query_instruction, show_progress=False)

    def encode_passages(self, passages: list[str], show_progress: bool = False) -> np.ndarray:
        """[n, dim] float32, unit L2 norm, with the passage instruction prepended."""
        return self._encode(list(passages), self.passage_instruction, show_progress)
