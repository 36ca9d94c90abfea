"""Knowledge: a local RAG store over the user's documents.

load (:mod:`.loaders`) -> chunk (:mod:`.chunking`) -> embed (:mod:`.embed`) -> FAISS + FTS5
(:mod:`.index`, :mod:`.store`) -> retrieve (:meth:`Store.search`, hybrid by reciprocal rank fusion).
Importing this package does not import torch, sentence-transformers or faiss.
"""

from .embed import Embedder, SentenceTransformerEmbedder, default_embedder
from .store import IngestReport, SearchHit, Store, StoreConfig, StoreInfo


def open_store(path, embedder: Embedder | None = None, *, create: bool = False,
               config: StoreConfig | None = None) -> Store:
    """Open (or with ``create``, create) the store at ``path`` with ``embedder`` (default: the bundled one,
    :func:`~dca.rag.embed.default_embedder`)."""
    return Store(path, embedder or default_embedder(), config=config, create=create)


__all__ = [
    "Embedder", "IngestReport", "SearchHit", "SentenceTransformerEmbedder", "Store", "StoreConfig",
    "StoreInfo", "default_embedder", "open_store",
]
