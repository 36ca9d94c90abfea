"""Retrieval quality of a dca store on any corpus and question file: dense, lexical, hybrid and fusion variants.

For each data set the corpus (JSONL, one document a line: ``id``, ``title``, ``text``) is ingested into a store
(kept under ``--work`` and reused), and each question is searched once per ranking: the dense ranking (FAISS,
cosine) and the lexical one (SQLite FTS5, BM25), ``--candidates`` chunks each. The fusions are then computed from
these two rankings, so every variant is scored on the same candidates:

``hybrid``
    dca's store: the convex combination below with its default lexical weight (``dca.rag.lexical.LEXICAL_WEIGHT``).
``rrf``
    reciprocal rank fusion with equal weights, k = 60 (Cormack et al. 2009), dca's hybrid search before issue 21.
``wrrf-L``
    weighted RRF: lexical weight L, dense weight 1 - L (scaled to sum 2, so that L = 0.5 is ``rrf``).
``hybrid+rerank-N``
    (``--rerank N``) hybrid's first N chunks reordered by the cross-encoder (:mod:`dca.rag.rerank`), as
    ``Store.search(..., rerank=N)``; its time per query is reported.
``hybrid+rerank-N-mix-B``
    (``--rerank N``) hybrid's first N chunks ordered by B * the cross-encoder's logit + (1 - B) * hybrid's fused
    score, each min-max normalized over those N (the reranker's judgement kept beside the retrievers' instead of
    replacing it); B = 1 is ``hybrid+rerank-N``.
``convex-A``
    convex combination of normalized scores (Bruch et al. 2023, "An Analysis of Fusion Functions for Hybrid
    Retrieval"): A * lexical + (1 - A) * dense, each min-max normalized over its own candidates (a chunk absent
    from a ranking scores 0 there).

Metrics, per data set and ranking: recall@1/5/10 and MRR@10 over documents (a hit is a chunk of a gold document,
``gold_ids`` or ``gold_paragraph_id``) or, where the questions have answer strings and no gold ids, over chunks
containing an answer (case-insensitive); and the search time per query of the two rankings.

    .venv/bin/python benchmarks/retrieval.py [--set squad --set obliqa] [--corpus C --qa Q --name N]
        [--limit N] [--every N] [--candidates 40] [--work DIR] [--backend llama.cpp] [--rerank N]
        [--chunk-tokens 220 --overlap-tokens 32] [--json-out F]

``squad`` is SQuAD v1.1 dev (2,067 Wikipedia paragraphs, its first 1,000 questions); ``obliqa`` is ObliQA (1,507
sections of a financial regulator's rulebooks, every 9th of its 2,788 dev questions: 310). To choose weights for
your own documents, give them as ``--corpus`` with a few hundred questions whose gold document ids you know.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _common import default_data_dir, read_jsonl, run_main, write_json

KS = (1, 5, 10)
SETS = {"squad": ("squad_dev_corpus.jsonl", "squad_dev_qa.jsonl", 1000, 1),
        "obliqa": ("obliqa_corpus.jsonl", "obliqa_dev_qa.jsonl", 0, 9)}
WRRF = (0.6, 0.7, 0.8)
CONVEX = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
RERANK_MIX = (0.5, 0.7, 0.85)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--set", action="append", choices=sorted(SETS), help="a named data set (repeatable)")
    p.add_argument("--corpus", type=Path, help="your corpus JSONL (id, title, text)")
    p.add_argument("--qa", type=Path, help="your questions JSONL (question; gold_ids or answers)")
    p.add_argument("--name", default="custom", help="the name of --corpus/--qa in the tables")
    p.add_argument("--limit", type=int, default=None, help="first N questions (after --every)")
    p.add_argument("--every", type=int, default=None, help="every Nth question")
    p.add_argument("--candidates", type=int, default=40,
                   help="chunks taken from each ranking (default: 40, what the store takes for k = 5)")
    p.add_argument("--work", type=Path, default=Path(".retrieval-work"), help="stores are kept here and reused")
    p.add_argument("--rerank", type=int, action="append", default=[],
                   help="also hybrid's first N chunks reordered by the cross-encoder (repeatable, e.g. --rerank 20)")
    p.add_argument("--backend", choices=("sentence-transformers", "llama.cpp"), default="sentence-transformers",
                   help="the embedder's backend (each has its own stores under --work)")
    p.add_argument("--chunk-tokens", type=int, default=None,
                   help="the stores' chunk size (dca rag ingest --chunk-tokens; default: dca's); each size has "
                        "its own stores under --work")
    p.add_argument("--overlap-tokens", type=int, default=None, help="dca rag ingest --overlap-tokens")
    p.add_argument("--json-out", type=Path, default=None)
    return p.parse_args(argv)


def gold_of(q: dict) -> tuple[set[str], list[str]]:
    ids = q.get("gold_ids") or ([q["gold_paragraph_id"]] if q.get("gold_paragraph_id") else [])
    return set(map(str, ids)), [a for a in q.get("answers", []) if a]


def collect(store, questions: list[dict], n: int) -> tuple[list, dict, float]:
    """Per question: (dense [(chunk id, cosine)], lexical [(chunk id, bm25)]); chunk id -> (doc id, text); ms/query."""
    from dca.rag import index as vindex

    runs = []
    t0 = time.perf_counter()
    for q in questions:
        qvec = store.embedder.embed([q["question"]], is_query=True)[0]
        ids, scores = vindex.search_index(store._dense_index(), qvec, n)
        runs.append((list(zip(ids.tolist(), scores.tolist())), store._lexical(q["question"], n)))
    ms = 1000 * (time.perf_counter() - t0) / max(1, len(questions))
    rows = store._db.execute("SELECT id, source, text FROM chunks").fetchall()
    chunks = {cid: (src.split("#", 1)[1] if "#" in src else src, text) for cid, src, text in rows}
    return runs, chunks, ms


def rrf(rankings, weights, k: int = 60) -> list[int]:
    fused: dict[int, float] = {}
    for ranking, w in zip(rankings, weights):
        for rank, (cid, _) in enumerate(ranking):
            fused[cid] = fused.get(cid, 0.0) + w / (k + rank + 1)
    return [cid for cid, _ in sorted(fused.items(), key=lambda x: -x[1])]


def convex(dense, lexical, alpha: float) -> list[int]:
    """The store's own fusion (:func:`dca.rag.lexical.convex_fusion`) with lexical weight ``alpha``."""
    from dca.rag.lexical import convex_fusion

    return [cid for cid, _ in convex_fusion(dense, lexical, alpha)]


def convex_scores(dense, lexical) -> list[tuple[int, float]]:
    """Hybrid's (chunk, fused score) pairs, best first, at the store's default lexical weight."""
    from dca.rag.lexical import LEXICAL_WEIGHT, convex_fusion

    return convex_fusion(dense, lexical, LEXICAL_WEIGHT)


def minmax(xs) -> list[float]:
    """``xs`` scaled to [0, 1] (all 1 when they are equal)."""
    lo, hi = min(xs), max(xs)
    return [(x - lo) / (hi - lo) if hi > lo else 1.0 for x in xs]


def variants(dense, lexical) -> dict[str, list[int]]:
    from dca.rag.lexical import LEXICAL_WEIGHT

    out = {"dense": [c for c, _ in dense], "lexical": [c for c, _ in lexical], "rrf": rrf([dense, lexical], [1, 1]),
           f"hybrid (default, convex-{LEXICAL_WEIGHT})": convex(dense, lexical, LEXICAL_WEIGHT)}
    for w in WRRF:
        out[f"wrrf-{w}"] = rrf([dense, lexical], [2 * (1 - w), 2 * w])
    for a in CONVEX:
        out[f"convex-{a}"] = convex(dense, lexical, a)
    return out


def score(ranked: list[int], chunks: dict, gold_ids: set[str], answers: list[str]) -> int | None:
    """1-based rank of the first relevant chunk in the top 10, or None."""
    for i, cid in enumerate(ranked[:max(KS)]):
        doc, text = chunks[cid]
        if gold_ids:
            if doc in gold_ids:
                return i + 1
        elif any(a.lower() in text.lower() for a in answers):
            return i + 1
    return None


def run_set(name: str, corpus: Path, qa: Path, limit: int | None, every: int, args) -> dict:
    from dca.rag import Store, default_embedder
    from dca.rag.store import StoreConfig

    questions = [q for i, q in enumerate(read_jsonl(qa)) if i % every == 0]
    questions = questions[:limit] if limit else questions
    config = StoreConfig(**{k: v for k, v in (("chunk_tokens", args.chunk_tokens),
                                              ("overlap_tokens", args.overlap_tokens)) if v is not None})
    default = StoreConfig()
    size = "" if (config.chunk_tokens, config.overlap_tokens) == (default.chunk_tokens, default.overlap_tokens) \
        else f"-c{config.chunk_tokens}o{config.overlap_tokens}"
    store_path = args.work / ((name if args.backend == "sentence-transformers" else f"{name}-{args.backend}") + size)
    embedder = default_embedder(args.backend)
    with Store.create(store_path, embedder, config) if not (store_path / "manifest.json").exists() else \
            Store.open(store_path, embedder) as store:
        if store.info().chunks == 0:
            t0 = time.perf_counter()
            store.ingest([corpus])
            print(f"{name}: ingested {corpus.name} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        built = (store.config.chunk_tokens, store.config.overlap_tokens)
        if built != (config.chunk_tokens, config.overlap_tokens):
            raise SystemExit(f"{store_path} was built with --chunk-tokens {built[0]} --overlap-tokens {built[1]}, "
                             f"not {config.chunk_tokens}/{config.overlap_tokens}: remove it or use another --work")
        info = store.info()
        runs, chunks, ms = collect(store, questions, args.candidates)
    reranker, rerank_s = None, []
    if args.rerank:
        from dca.rag.rerank import CrossEncoder

        reranker = CrossEncoder()
    ranks: dict[str, list] = {}
    for q, (dense, lexical) in zip(questions, runs):
        gold_ids, answers = gold_of(q)
        ranked_by = variants(dense, lexical)
        if reranker is not None:
            hybrid = next(r for v, r in ranked_by.items() if v.startswith("hybrid"))
            top = hybrid[:max(args.rerank)]
            t0 = time.perf_counter()
            logits = reranker.score(q["question"], [chunks[c][1] for c in top])
            rerank_s.append(time.perf_counter() - t0)
            fused = dict(convex_scores(dense, lexical))
            for n in args.rerank:  # the pairs are scored one by one: the first n's scores are those of a run on n
                order = sorted(range(min(n, len(top))), key=lambda i: (-logits[i], i))
                ranked_by[f"hybrid+rerank-{n}"] = [top[i] for i in order] + hybrid[n:]
                ce, hy = minmax(logits[:len(order)]), minmax([fused[c] for c in top[:len(order)]])
                for b in RERANK_MIX:
                    mixed = sorted(range(len(order)), key=lambda i: (-(b * ce[i] + (1 - b) * hy[i]), i))
                    ranked_by[f"hybrid+rerank-{n}-mix-{b}"] = [top[i] for i in mixed] + hybrid[n:]
        for v, ranked in ranked_by.items():
            ranks.setdefault(v, []).append(score(ranked, chunks, gold_ids, answers))
    n = len(questions)
    table = {v: {**{f"R@{k}": sum(r is not None and r <= k for r in rs) / n for k in KS},
                 "MRR@10": sum(1 / r for r in rs if r is not None) / n} for v, rs in ranks.items()}
    kind = "gold document" if any(gold_of(q)[0] for q in questions) else "answer-containing chunk"
    words = statistics.mean(len(t.split()) for _, t in chunks.values()) if chunks else 0.0
    out = {"name": name, "questions": n, "documents": info.documents, "chunks": info.chunks, "relevance": kind,
           "chunk_tokens": config.chunk_tokens, "overlap_tokens": config.overlap_tokens, "words_per_chunk": words,
           "search_ms_per_query_both_rankings": ms, "table": table}
    if rerank_s:
        out["rerank"] = {"candidates": max(args.rerank), "s_per_query_median": statistics.median(rerank_s)}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    jobs = []
    for s in args.set or ([] if args.corpus else list(SETS)):
        corpus, qa, limit, every = SETS[s]
        jobs.append((s, args.data_dir / corpus, args.data_dir / qa, args.limit or limit, args.every or every))
    if args.corpus:
        if not args.qa:
            print("--corpus needs --qa", file=sys.stderr)
            return 2
        jobs.append((args.name, args.corpus, args.qa, args.limit, args.every or 1))
    for _, corpus, qa, _, _ in jobs:
        if not corpus.is_file() or not qa.is_file():
            print(f"not found: {corpus} or {qa} (pass --data-dir)", file=sys.stderr)
            return 2
    args.work.mkdir(parents=True, exist_ok=True)
    results = [run_set(*job, args) for job in jobs]
    for r in results:
        print(f"\n{r['name']}: {r['questions']} questions, {r['documents']} documents, {r['chunks']} chunks "
              f"(--chunk-tokens {r['chunk_tokens']}, {r['words_per_chunk']:.0f} words on average), "
              f"relevance: {r['relevance']}, {r['search_ms_per_query_both_rankings']:.1f} ms/query (both rankings)"
              + (f"; reranking {r['rerank']['candidates']} chunks {r['rerank']['s_per_query_median']:.2f} s/query "
                 "(median)" if "rerank" in r else ""))
        print(f"| ranking | {' | '.join(f'R@{k}' for k in KS)} | MRR@10 |")
        print("|---|" + "---|" * (len(KS) + 1))
        for v, m in r["table"].items():
            print(f"| {v} | " + " | ".join(f"{m[f'R@{k}']:.3f}" for k in KS) + f" | {m['MRR@10']:.3f} |")
    write_json(args.json_out, {"candidates": args.candidates, "sets": results})
    return 0


if __name__ == "__main__":
    run_main(main)
