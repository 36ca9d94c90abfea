"""Sentence-level context compression: keep only the retrieved sentences that rank best for the question.

An extractive compressor in the manner of RECOMP (Xu et al. 2023, "RECOMP: Improving Retrieval-Augmented LMs
with Compression and Selective Augmentation") and LlamaIndex's ``SentenceEmbeddingOptimizer``: a small model
reads a few relevant sentences better than several long passages, and the prompt is shorter (figures in
benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .chunking import split_sentences
from .embed import Embedder
from .lexical import RRF_K, bm25_scores


def compress_passages(question: str, passages: Sequence[str], n: int, embedder: Embedder) -> dict[int, str]:
    """The ``n`` sentences of ``passages`` (best-ranked passage first) that rank best for ``question``.

    Sentences are ranked by reciprocal rank fusion (k = 60; Cormack et al. 2009, as the store's hybrid search
    fuses passages) of three rankings: their cosine to the question (``embedder``), their BM25 among these
    sentences, and the rank of their passage (sentences of one passage share it).

    Returns:
        passage index -> its kept sentences joined by spaces, in document order; passages left without a
        sentence are absent. When the passages hold at most ``n`` sentences, every passage whole.
    """
    sentences = [(i, s) for i, p in enumerate(passages) for s in split_sentences(p)]
    if len(sentences) <= n:
        return dict(enumerate(passages))
    texts = [s for _, s in sentences]
    q = embedder.embed([question], is_query=True)[0]
    fused = 1.0 / (RRF_K + np.array([i for i, _ in sentences]) + 1)  # the passage's rank (ties share it)
    for scores in (embedder.embed(texts) @ q, bm25_scores(question, texts)):
        ranks = np.empty(len(sentences))
        ranks[np.argsort(-scores, kind="stable")] = np.arange(len(sentences))
        fused += 1.0 / (RRF_K + ranks + 1)
    picked: dict[int, list[str]] = {}
    for j in sorted(np.argsort(-fused, kind="stable")[:n]):  # document order within each passage
        picked.setdefault(sentences[j][0], []).append(sentences[j][1])
    return {i: " ".join(picked[i]) for i in sorted(picked)}
