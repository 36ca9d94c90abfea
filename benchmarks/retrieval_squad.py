"""Retrieval quality of a dca store on SQuAD v1.1 dev: recall@1/5/10 for dense, lexical and hybrid search.

Ingests ``squad_dev_corpus.jsonl`` (2,067 Wikipedia paragraphs, one JSONL record each) into a store, then
asks the first ``--limit`` questions of ``squad_dev_qa.jsonl``. recall@k is the fraction of questions whose
gold paragraph id is among the ``doc_id`` of the top-k hits (one ``store.search(q, k=10)`` per mode and
question). The acceptance target is hybrid recall@5 >= 0.90.

    .venv/bin/python benchmarks/retrieval_squad.py [--limit 1000] [--json-out results.json]

The data sets live in ``../shared/data`` beside the repository (see that folder's README); they are not
needed by dca itself, only by this benchmark.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from _common import default_data_dir, read_jsonl, run_main, write_json

MODES = ("dense", "lexical", "hybrid")
KS = (1, 5, 10)
TARGET_MODE, TARGET_K, TARGET = "hybrid", 5, 0.90
CORPUS = "squad_dev_corpus.jsonl"
QA = "squad_dev_qa.jsonl"



def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir(),
                   help=f"folder holding {CORPUS} and {QA} (default: %(default)s)")
    p.add_argument("--store-dir", type=Path, default=None,
                   help="store to create or reuse (default: a temporary one, deleted at exit)")
    p.add_argument("--limit", type=int, default=1000, help="first N questions (default: %(default)s; 0 = all)")
    p.add_argument("--chunk-tokens", type=int, default=None, help="StoreConfig.chunk_tokens for a new store")
    p.add_argument("--overlap-tokens", type=int, default=None, help="StoreConfig.overlap_tokens for a new store")
    p.add_argument("--candidates", type=int, default=None,
                   help="hits per ranking fused by hybrid search (default: dca's, max(4k, 40))")
    p.add_argument("--json-out", type=Path, default=None, help="write the figures to this JSON file")
    return p.parse_args(argv)



def gold_rank(doc_ids: list[str], gold: str) -> int | None:
    """1-based rank of the first hit from the gold paragraph, or None."""
    return next((i + 1 for i, d in enumerate(doc_ids) if d == gold), None)


def evaluate(store, questions: list[dict], candidates: int | None) -> tuple[dict, dict]:
    """Search every question in every mode.

    Returns:
        (recall, ranks): recall[mode][f"recall@{k}"] in [0, 1]; ranks[mode] is the per-question
        1-based rank of the gold paragraph within the top 10, None when absent.
    """
    ranks: dict[str, list[int | None]] = {m: [] for m in MODES}
    seconds: dict[str, float] = {m: 0.0 for m in MODES}
    for q in questions:
        for mode in MODES:
            t0 = time.perf_counter()
            hits = store.search(q["question"], k=max(KS), mode=mode, candidates=candidates)
            seconds[mode] += time.perf_counter() - t0
            ranks[mode].append(gold_rank([h.doc_id for h in hits], q["gold_paragraph_id"]))
    n = len(questions)
    recall = {
        m: {**{f"recall@{k}": sum(r is not None and r <= k for r in ranks[m]) / n for k in KS},
            "mean_search_ms": 1000 * seconds[m] / n}
        for m in MODES
    }
    return recall, ranks


def diagnose(store, questions: list[dict], ranks: dict) -> dict:
    """Figures that explain hybrid misses: gold paragraphs split into chunks, and where each ranking put gold."""
    rows = store._db.execute("SELECT source, COUNT(*) FROM chunks GROUP BY source").fetchall()
    chunks_per_doc = {src.split("#", 1)[1]: n for src, n in rows}
    split = [chunks_per_doc.get(q["gold_paragraph_id"], 0) > 1 for q in questions]
    out = {
        "paragraphs": len(chunks_per_doc),
        "paragraphs_split": sum(n > 1 for n in chunks_per_doc.values()),
        "questions_gold_split": sum(split),
    }
    hyb = ranks["hybrid"]
    for name, sel in (("gold_split", split), ("gold_whole", [not s for s in split])):
        idx = [i for i, s in enumerate(sel) if s]
        if idx:
            out[f"hybrid_recall@5_{name}"] = sum(hyb[i] is not None and hyb[i] <= 5 for i in idx) / len(idx)
    n = len(questions)
    at5 = {m: [r is not None and r <= 5 for r in ranks[m]] for m in MODES}
    out["dense_or_lexical_recall@5"] = sum(d or lx for d, lx in zip(at5["dense"], at5["lexical"])) / n
    out["dense_and_lexical_recall@5"] = sum(d and lx for d, lx in zip(at5["dense"], at5["lexical"])) / n
    out["hybrid_miss_but_dense_hit@5"] = sum(d and not h for d, h in zip(at5["dense"], at5["hybrid"]))
    out["hybrid_miss_but_lexical_hit@5"] = sum(lx and not h for lx, h in zip(at5["lexical"], at5["hybrid"]))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    corpus, qa = args.data_dir / CORPUS, args.data_dir / QA
    missing = [str(p) for p in (corpus, qa) if not p.is_file()]
    if missing:
        print(f"error: data set not found: {', '.join(missing)}\n"
              f"pass --data-dir DIR (the folder holding {CORPUS} and {QA}; see ../shared/data/README.md)",
              file=sys.stderr)
        return 2

    from dca.rag import SentenceTransformerEmbedder, Store, StoreConfig

    overrides = {k: v for k, v in (("chunk_tokens", args.chunk_tokens), ("overlap_tokens", args.overlap_tokens))
                 if v is not None}
    config = StoreConfig(**overrides)
    questions = read_jsonl(qa, args.limit)

    embedder = SentenceTransformerEmbedder()
    t0 = time.perf_counter()
    _ = embedder.dim  # loads the model, so the ingest time below is chunk + embed + index only
    load_s = time.perf_counter() - t0

    ctx = (tempfile.TemporaryDirectory(prefix="dca-squad-") if args.store_dir is None
           else nullcontext(str(args.store_dir)))
    with ctx as store_dir:
        store_path = Path(store_dir) / "store" if args.store_dir is None else Path(store_dir)
        if (store_path / "manifest.json").exists() and overrides:
            print(f"note: {store_path} exists; it keeps its own chunking, "
                  f"--chunk-tokens/--overlap-tokens are ignored", file=sys.stderr)
        with Store.create(store_path, embedder, config) as store:
            report = store.ingest([corpus])
            if report.errors:
                print(f"error: ingest failed: {report.errors}", file=sys.stderr)
                return 1
            info = store.info()
            t0 = time.perf_counter()
            recall, ranks = evaluate(store, questions, args.candidates)
            eval_s = time.perf_counter() - t0
            diag = diagnose(store, questions, ranks)

    ok = recall[TARGET_MODE][f"recall@{TARGET_K}"] >= TARGET
    results = {
        "benchmark": "retrieval_squad",
        "questions": len(questions),
        "store": {"documents": info.documents, "chunks": info.chunks, "index": info.index_type,
                  "chunking": info.chunking, "embedder": info.embedder,
                  "reused": bool(report.unchanged)},
        "candidates": args.candidates or "default max(4k, 40)",
        "embedder_load_s": load_s,
        "ingest_s": report.seconds,
        "ingest_chunks_per_s": report.chunks_added / report.seconds if report.chunks_added else None,
        "eval_s": eval_s,
        "recall": recall,
        "diagnostics": diag,
        "target": {"metric": f"{TARGET_MODE} recall@{TARGET_K}", "min": TARGET, "pass": ok},
        "platform": {"python": platform.python_version(), "machine": platform.machine()},
    }

    print(f"SQuAD v1.1 dev retrieval: {len(questions)} questions, {info.documents} paragraphs -> "
          f"{info.chunks} chunks (chunk_tokens={info.chunking['chunk_tokens']}, "
          f"overlap_tokens={info.chunking['overlap_tokens']}), index {info.index_type}, "
          f"candidates {results['candidates']}")
    if report.chunks_added:
        print(f"ingest: {report.seconds:.1f} s ({results['ingest_chunks_per_s']:.1f} chunks/s), "
              f"embedder load {load_s:.1f} s")
    else:
        print(f"ingest: {report.seconds:.1f} s (store reused, nothing re-embedded)")
    print()
    print(f"{'mode':<8} " + " ".join(f"{'R@' + str(k):>6}" for k in KS) + f" {'ms/query':>9}")
    for m in MODES:
        print(f"{m:<8} " + " ".join(f"{recall[m][f'recall@{k}']:>6.3f}" for k in KS)
              + f" {recall[m]['mean_search_ms']:>9.1f}")
    print()
    print("diagnostics: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in diag.items()))
    print(f"{'PASS' if ok else 'FAIL'}: {TARGET_MODE} recall@{TARGET_K} = "
          f"{recall[TARGET_MODE][f'recall@{TARGET_K}']:.3f} (target >= {TARGET:.2f})")

    write_json(args.json_out, results)
    return 0


if __name__ == "__main__":
    run_main(main)
