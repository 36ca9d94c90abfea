"""Lexical ranking shared by the store and the assistant: the FTS5 query form, BM25 over a few texts,
and the constant of reciprocal rank fusion."""

from __future__ import annotations

import re
import sqlite3

import numpy as np

RRF_K = 60  # Cormack, Clarke & Buettcher 2009, "Reciprocal Rank Fusion outperforms Condorcet..."
# The lexical ranking's weight in hybrid search (the dense one's is 1 minus it). Chosen on two development sets
# of other domains, SQuAD v1.1 dev (Wikipedia) and ObliQA (regulatory rulebooks), with benchmarks/retrieval.py:
# recall@5 is flat between 0.5 and 0.7 on both (0.972-0.973 and 0.823-0.829 at 40 candidates), above each
# single ranking (lexical 0.946 and 0.797); 0.6 is the middle of that plateau (benchmarks/README.md).
LEXICAL_WEIGHT = 0.6


def convex_fusion(dense: list[tuple[int, float]], lexical: list[tuple[int, float]],
                  lexical_weight: float = LEXICAL_WEIGHT) -> list[tuple[int, float]]:
    """Fuse two scored rankings by a convex combination of their min-max normalized scores (Bruch, Gai &
    Ingber 2023, "An Analysis of Fusion Functions for Hybrid Retrieval", ACM TOIS): score = w * lexical +
    (1 - w) * dense, each score scaled to [0, 1] over its own ranking's candidates (its best 1, its worst 0; all
    1 when they are equal); an item absent from a ranking scores 0 there.

    Unlike reciprocal rank fusion it keeps how far apart the scores are, so a ranking that is sure of its first
    item (a rare term matched, a high cosine) outweighs one whose candidates score alike.

    Args:
        dense, lexical: ``(id, score)`` pairs, higher better (cosine; BM25 with its sign made positive).
        lexical_weight: w, in [0, 1].

    Returns:
        (id, fused score in [0, 1]) pairs, best first; ties keep the order of first appearance (dense first).
    """
    def scaled(ranking):
        if not ranking:
            return {}
        scores = [x for _, x in ranking]
        lo, hi = min(scores), max(scores)
        return {i: (x - lo) / (hi - lo) if hi > lo else 1.0 for i, x in ranking}

    d, lx = scaled(dense), scaled(lexical)
    ids = list(dict.fromkeys([i for i, _ in dense] + [i for i, _ in lexical]))
    fused = [(i, lexical_weight * lx.get(i, 0.0) + (1 - lexical_weight) * d.get(i, 0.0)) for i in ids]
    return sorted(fused, key=lambda x: -x[1])


def reciprocal_rank_fusion(rankings, key=lambda x: x) -> list[tuple[object, float]]:
    """Fuse rankings (each a sequence, best first) by reciprocal rank: score = sum over the rankings holding an
    item of 1 / (RRF_K + rank), rank from 1 (Cormack et al. 2009). Items are identified by ``key(item)``; the
    first item seen for a key stands for it.

    Returns:
        (item, score) pairs, best first; ties keep the order of first appearance.
    """
    fused: dict = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking):
            k = key(item)
            first, score = fused.get(k, (item, 0.0))
            fused[k] = (first, score + 1.0 / (RRF_K + rank + 1))
    return sorted(fused.values(), key=lambda x: -x[1])

# Function words dropped from lexical queries: they match most chunks and only slow FTS5 down.
STOPWORDS = frozenset(
    "a an and are as at be by for from has have how i in is it its of on or that the this to was were "
    "what when where which who whom why will with do does did can could would should you your".split()
)


def fts_query(query: str) -> str | None:
    """The FTS5 MATCH expression for ``query``: its words, function words dropped (all words when only
    function words remain), each quoted (no FTS5 syntax gets through) and OR-ed; None when it has no word."""
    words = [w for w in re.findall(r"\w+", query.lower()) if w not in STOPWORDS]
    if not words:
        words = re.findall(r"\w+", query.lower())
    # Quoted terms OR-ed: BM25 ranks by how many (and how rare) terms match; quotes neutralise FTS5 syntax.
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words)) or None


def bm25_scores(query: str, texts: list[str]) -> np.ndarray:
    """BM25 scores of ``texts`` for ``query`` (higher is better; 0 for texts matching no query term), by an
    in-memory SQLite FTS5 table with the store's tokenizer (Porter-stemmed, unicode61) and query form
    (function words dropped, terms OR-ed). Term statistics are those of ``texts`` alone.

    Returns:
        float array, shape (len(texts),).
    """
    scores = np.zeros(len(texts))
    match = fts_query(query)
    if match is None or not texts:
        return scores
    db = sqlite3.connect(":memory:")
    try:
        db.execute("CREATE VIRTUAL TABLE t USING fts5(text, tokenize='porter unicode61')")
        db.executemany("INSERT INTO t(rowid, text) VALUES (?, ?)", ((i + 1, x) for i, x in enumerate(texts)))
        for rowid, bm25 in db.execute("SELECT rowid, bm25(t) FROM t WHERE t MATCH ?", (match,)):
            scores[rowid - 1] = -bm25  # FTS5's bm25() is negated: lower is better
    finally:
        db.close()
    return scores
