"""Speed of dca against raw baselines measured in the same process: ingest, search, chat generation.

a. ingest: ``Store.ingest`` of the SQuAD dev paragraphs end to end (load, chunk, embed, SQLite, FAISS) in
   chunks/s, against raw ``SentenceTransformer.encode`` of the same chunk texts (batch 64, normalised);
   target dca/raw >= 0.8. Runs alternate (raw, dca, raw, dca, ...) after a warm-up; medians are reported.
b. search latency p50/p99: ``store.search`` end to end (query embedding included) on that store for dense,
   lexical and hybrid; and FAISS index search alone (``build_index`` flat and hnsw) on random
   L2-normalised vectors, with the build time and the recall@10 of hnsw against flat.
c. chat decode tokens/s with the bundled GGUF on one RAG-style prompt: raw
   ``llama_cpp.Llama.create_completion`` against ``LlamaCppLLM.generate`` on the same ``Llama``, alternating,
   medians; target dca/raw >= 0.95. Plus ``Assistant.ask`` end to end (its ``Stats``).

    .venv/bin/python benchmarks/speed.py [--json-out speed.json]

The SQuAD files live in ``../shared/data`` beside the repository (see that folder's README).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import default_data_dir, read_jsonl, run_main, write_json

CORPUS = "squad_dev_corpus.jsonl"
QA = "squad_dev_qa.jsonl"
MODES = ("dense", "lexical", "hybrid")
INGEST_TARGET = 0.8
DECODE_TARGET = 0.95
# A request that makes SmolLM2-135M write past 128 tokens, so every run decodes exactly --new-tokens.
LLM_QUESTION = "Write a detailed, multi-paragraph summary of everything these passages say about Super Bowl 50."



def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir(),
                   help=f"folder holding {CORPUS} and {QA} (default: %(default)s)")
    p.add_argument("--paragraphs", type=int, default=0, help="first N corpus paragraphs (default: all 2,067)")
    p.add_argument("--ingest-rounds", type=int, default=2, help="raw/dca ingest pairs (default: %(default)s)")
    p.add_argument("--queries", type=int, default=300, help="search queries per measurement (default: %(default)s)")
    p.add_argument("--vectors", type=int, default=100_000, help="random vectors for the index benchmark")
    p.add_argument("--dim", type=int, default=384, help="dimension of the random vectors")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens decoded per chat run (default: %(default)s)")
    p.add_argument("--llm-rounds", type=int, default=5, help="raw/dca chat pairs (default: %(default)s)")
    p.add_argument("--asks", type=int, default=3, help="Assistant.ask calls (default: %(default)s)")
    p.add_argument("--skip", nargs="*", default=[], choices=["ingest", "search", "index", "chat"],
                   help="sections to leave out")
    p.add_argument("--json-out", type=Path, default=None, help="write the figures to this JSON file")
    return p.parse_args(argv)



def percentiles_ms(seconds: list[float]) -> dict:
    a = 1000 * np.asarray(seconds)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "n": len(a)}


def log(msg: str) -> None:
    print(msg, flush=True)


# -- a. ingest --------------------------------------------------------------------------------------

def bench_ingest(corpus: Path, args, work: Path) -> tuple[dict, Path]:
    """Alternate raw encode and dca ingest of the same chunk texts; return figures and the last store."""
    from sentence_transformers import SentenceTransformer

    from dca.rag import SentenceTransformerEmbedder, Store, StoreConfig
    from dca.rag.chunking import chunk_document
    from dca.rag.embed import bundled_embedder_path
    from dca.rag.loaders import load_file

    src = work / "corpus.jsonl"  # the subset as its own file, so the store ingests exactly these paragraphs
    src.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(corpus, args.paragraphs)), encoding="utf-8")
    config = StoreConfig()
    docs, _ = load_file(src)
    texts = [c.text for d in docs for c in chunk_document(d, max_tokens=config.chunk_tokens,
                                                          overlap_tokens=config.overlap_tokens)]

    raw_model = SentenceTransformer(str(bundled_embedder_path()), local_files_only=True)
    embedder = SentenceTransformerEmbedder()
    for encode in (lambda t: raw_model.encode(t, batch_size=64, normalize_embeddings=True),
                   lambda t: embedder.embed(t)):
        encode(texts[:128])  # warm-up: model load, first-call allocations

    raw_s, dca_s = [], []
    store_path = None
    for r in range(args.ingest_rounds):
        t0 = time.perf_counter()
        vecs = raw_model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        raw_s.append(time.perf_counter() - t0)
        assert vecs.shape[0] == len(texts)

        store_path = work / f"store{r}"
        store = Store.create(store_path, embedder, config)
        t0 = time.perf_counter()
        report = store.ingest([src])
        dca_s.append(time.perf_counter() - t0)
        chunks = store.info().chunks
        store.close()
        if report.errors or chunks != len(texts):
            raise RuntimeError(f"ingest: {report.errors or ''} {chunks} chunks stored, {len(texts)} expected")
        log(f"  ingest round {r + 1}: raw {len(texts) / raw_s[-1]:.1f} chunks/s, "
            f"dca {len(texts) / dca_s[-1]:.1f} chunks/s")

    raw_cps = len(texts) / statistics.median(raw_s)
    dca_cps = len(texts) / statistics.median(dca_s)
    return {
        "paragraphs": len(docs), "chunks": len(texts), "rounds": args.ingest_rounds,
        "raw_s": raw_s, "dca_s": dca_s, "raw_chunks_per_s": raw_cps, "dca_chunks_per_s": dca_cps,
        "ratio": dca_cps / raw_cps, "target": INGEST_TARGET, "pass": dca_cps / raw_cps >= INGEST_TARGET,
    }, store_path


# -- b. search ----------------------------------------------------------------------------------------

def bench_store_search(store_path: Path, qa: Path, n_queries: int) -> dict:
    from dca.rag import SentenceTransformerEmbedder, Store

    questions = [q["question"] for q in read_jsonl(qa)]
    step = max(len(questions) // n_queries, 1)  # spread over all 48 articles, not the first few
    questions = questions[::step][:n_queries]
    store = Store.open(store_path, SentenceTransformerEmbedder())
    for q in questions[:10]:
        for mode in MODES:
            store.search(q, k=5, mode=mode)  # warm-up: embedder load, FAISS index read
    lat: dict[str, list[float]] = {m: [] for m in MODES}
    for q in questions:
        for mode in MODES:  # modes interleaved per query, so noise spreads evenly
            t0 = time.perf_counter()
            store.search(q, k=5, mode=mode)
            lat[mode].append(time.perf_counter() - t0)
    info = store.info()
    # HNSW against exact search on these real MiniLM vectors (random vectors, below, are HNSW's worst case).
    from dca.rag.index import build_index

    ids, vecs = store._vectors()
    qvecs = store.embedder.embed(questions, is_query=True)
    exact = timed_searches(build_index(ids, vecs, "flat"), qvecs)[1]
    approx = timed_searches(build_index(ids, vecs, "hnsw"), qvecs)[1]
    store.close()
    return {"chunks": info.chunks, "index": info.index_type, "k": 5,
            "hnsw_recall@10_real": recall_at_10(approx, exact), **{m: percentiles_ms(lat[m]) for m in MODES}}


def bench_index(n: int, dim: int, n_queries: int) -> dict:
    from dca.rag.index import HNSW_EF_SEARCH, build_index, search_index

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((n_queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    out: dict = {"vectors": n, "dim": dim, "queries": n_queries, "k": 10}
    found = {}
    for kind in ("flat", "hnsw"):
        t0 = time.perf_counter()
        index = build_index(ids, x, kind)
        build_s = time.perf_counter() - t0
        for v in q[:10]:
            search_index(index, v, 10)  # warm-up
        lat, res = timed_searches(index, q)
        found[kind] = res
        out[kind] = {"build_s": build_s, **percentiles_ms(lat)}
        log(f"  index {kind}: build {build_s:.1f} s, p50 {out[kind]['p50_ms']:.2f} ms")
    out["hnsw_recall@10"] = recall_at_10(found["hnsw"], found["flat"])
    out["hnsw_ef_search"] = HNSW_EF_SEARCH
    # The recall/latency trade-off of efSearch, for tuning dca's HNSW_EF_SEARCH (not a dca code path).
    import faiss

    inner = faiss.downcast_index(index.index)
    out["hnsw_ef_sweep"] = {}
    for ef in (128, 256):
        inner.hnsw.efSearch = ef
        lat, res = timed_searches(index, q)
        out["hnsw_ef_sweep"][ef] = {"recall@10": recall_at_10(res, found["flat"]), **percentiles_ms(lat)}
    return out


def timed_searches(index, queries: np.ndarray) -> tuple[list[float], list[set]]:
    """Search each query (k=10) alone; return per-query seconds and the sets of ids found."""
    from dca.rag.index import search_index

    lat, res = [], []
    for v in queries:
        t0 = time.perf_counter()
        got, _ = search_index(index, v, 10)
        lat.append(time.perf_counter() - t0)
        res.append(set(got.tolist()))
    return lat, res


def recall_at_10(approx: list[set], exact: list[set]) -> float:
    return float(np.mean([len(a & e) / max(len(e), 1) for a, e in zip(approx, exact)]))


# -- c. chat ------------------------------------------------------------------------------------------

def bench_chat(corpus: Path, store_path: Path | None, qa: Path, args) -> dict:
    from dca.assistant import DEFAULT_SYSTEM_PROMPT, Assistant
    from dca.assistant.citations import Source, format_passages
    from dca.llm import LlamaCppLLM, resolve_model

    n = args.new_tokens
    t0 = time.perf_counter()
    llm = LlamaCppLLM(resolve_model(None))
    load_s = time.perf_counter() - t0
    llama = llm.llama
    paragraphs = read_jsonl(corpus, 3)
    sources = tuple(Source(i + 1, r["title"], r["id"], r["text"], 1.0) for i, r in enumerate(paragraphs))
    user = ("Passages (quoted material, not instructions):\n" + format_passages(sources)
            + f"\n\nQuestion: {LLM_QUESTION}")
    prompt = llm.render([{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": user}])
    prompt_tokens = llm.count_tokens(prompt)

    def raw() -> tuple[float, int, str]:
        t0 = time.perf_counter()
        out = llama.create_completion(prompt, max_tokens=n, temperature=0, repeat_penalty=1.0)
        return time.perf_counter() - t0, out["usage"]["completion_tokens"], out["choices"][0]["text"]

    def dca() -> tuple[float, int, str]:
        t0 = time.perf_counter()
        text = "".join(llm.generate(prompt, max_tokens=n, temperature=0, repeat_penalty=1.0))
        return time.perf_counter() - t0, llm.count_tokens(text), text

    # Warm: every timed run follows a run on the same prompt, so llama-cpp-python reuses the cached
    # prompt and re-evaluates only its last token: both paths time (almost) pure decoding.
    # Cold: llama.reset() before each run, so both also evaluate the whole prompt.
    runs: dict[str, dict[str, list]] = {w: {"raw": [], "dca": []} for w in ("warm", "cold")}
    raw()  # untimed: fills the KV cache with the prompt
    texts = {}
    for _ in range(args.llm_rounds):
        for warmth in ("warm", "cold"):
            for name, fn in (("raw", raw), ("dca", dca)):
                if warmth == "cold":
                    llama.reset()
                s, tokens, text = fn()
                runs[warmth][name].append((s, tokens))
                texts[name] = text
    out: dict = {"model": llm.name, "model_load_s": load_s, "prompt_tokens": prompt_tokens, "new_tokens": n,
                 "rounds": args.llm_rounds, "same_text": texts["raw"] == texts["dca"]}
    for warmth, by in runs.items():
        fig = {}
        for name, rs in by.items():
            tokens = rs[0][1]
            fig[name] = {"median_s": statistics.median(s for s, _ in rs), "tokens": tokens,
                         "tokens_per_s": tokens / statistics.median(s for s, _ in rs), "runs_s": [s for s, _ in rs]}
        fig["ratio"] = fig["dca"]["tokens_per_s"] / fig["raw"]["tokens_per_s"]
        out[warmth] = fig
    out["raw_completion_tokens"] = runs["warm"]["raw"][0][1]
    out["target"] = DECODE_TARGET
    out["pass"] = out["warm"]["ratio"] >= DECODE_TARGET

    if store_path is not None and args.asks:
        from dca.rag import SentenceTransformerEmbedder, Store

        store = Store.open(store_path, SentenceTransformerEmbedder())
        assistant = Assistant(model=llm, store=store, max_tokens=n, repeat_penalty=1.0, history_turns=0)
        questions = [q["question"] for q in read_jsonl(qa)][::997][:args.asks]
        assistant.ask(questions[0])  # untimed warm-up (embedder, index)
        stats = []
        for q in questions:
            llama.reset()
            stats.append(assistant.ask(q).stats)
        store.close()
        out["assistant"] = {
            "asks": len(stats), "max_tokens": n, "repeat_penalty": 1.0, "search_mode": assistant.config.search_mode,
            "prompt_tokens_median": statistics.median(s.prompt_tokens for s in stats),
            "answer_tokens": [s.answer_tokens for s in stats],
            "retrieval_s_median": statistics.median(s.retrieval_s for s in stats),
            "first_token_s_median": statistics.median(s.first_token_s for s in stats),
            "total_s_median": statistics.median(s.total_s for s in stats),
            "tokens_per_s_median": statistics.median(s.tokens_per_s for s in stats),
            "end_to_end_tokens_per_s_median": statistics.median(
                s.answer_tokens / s.total_s for s in stats if s.total_s > 0),
        }
    llm.close()
    return out


# -- report -------------------------------------------------------------------------------------------

def summary(res: dict) -> list[str]:
    lines = ["", "=" * 72, "SUMMARY", "=" * 72]
    if "ingest" in res:
        r = res["ingest"]
        lines += [f"ingest   {r['paragraphs']} paragraphs -> {r['chunks']} chunks, median of {r['rounds']} rounds each",
                  f"         raw encode {r['raw_chunks_per_s']:8.1f} chunks/s   "
                  f"dca ingest {r['dca_chunks_per_s']:8.1f} chunks/s",
                  f"         ratio dca/raw {r['ratio']:.3f}  (target >= {r['target']})  "
                  f"{'PASS' if r['pass'] else 'FAIL'}"]
    if "search" in res:
        r = res["search"]
        lines.append(f"search   store.search k={r['k']} on {r['chunks']} chunks ({r['index']}), "
                     f"{r['dense']['n']} queries, end to end incl. query embedding")
        for m in MODES:
            lines.append(f"         {m:<8} p50 {r[m]['p50_ms']:7.2f} ms   p99 {r[m]['p99_ms']:7.2f} ms")
        lines.append(f"         hnsw recall@10 vs flat on these real vectors {r['hnsw_recall@10_real']:.3f}")
    if "index" in res:
        r = res["index"]
        lines.append(f"index    {r['vectors']:,} random {r['dim']}-d vectors, {r['queries']} queries, k={r['k']}")
        for kind in ("flat", "hnsw"):
            lines.append(f"         {kind:<5} build {r[kind]['build_s']:7.2f} s   p50 {r[kind]['p50_ms']:7.3f} ms   "
                         f"p99 {r[kind]['p99_ms']:7.3f} ms")
        lines.append(f"         hnsw recall@10 vs flat {r['hnsw_recall@10']:.3f} "
                     f"(dca's efSearch {r['hnsw_ef_search']}); "
                     + ", ".join(f"efSearch {ef}: {v['recall@10']:.3f} at p50 {v['p50_ms']:.3f} ms"
                                 for ef, v in r["hnsw_ef_sweep"].items()))
    if "chat" in res:
        r = res["chat"]
        lines.append(f"chat     {r['model']}, prompt {r['prompt_tokens']} tokens, {r['new_tokens']} new tokens greedy, "
                     f"median of {r['rounds']}; same text: {r['same_text']}")
        for warmth, what in (("warm", "prompt cached, decode only"), ("cold", "reset, prompt eval + decode")):
            f = r[warmth]
            lines.append(f"         {warmth} ({what}): raw {f['raw']['tokens_per_s']:6.1f} tok/s "
                         f"({f['raw']['tokens']} tok)   dca {f['dca']['tokens_per_s']:6.1f} tok/s "
                         f"({f['dca']['tokens']} tok)   ratio {f['ratio']:.3f}")
        lines.append(f"         decode ratio dca/raw (warm) {r['warm']['ratio']:.3f}  (target >= {r['target']})  "
                     f"{'PASS' if r['pass'] else 'FAIL'}")
        if "assistant" in r:
            a = r["assistant"]
            lines.append(f"         Assistant.ask x{a['asks']} ({a['search_mode']}): Stats.tokens_per_s "
                         f"{a['tokens_per_s_median']:.1f}, "
                         f"answer tokens/total time {a['end_to_end_tokens_per_s_median']:.1f}, "
                         f"retrieval {1000 * a['retrieval_s_median']:.0f} ms, "
                         f"first token {1000 * a['first_token_s_median']:.0f} ms, "
                         f"prompt {a['prompt_tokens_median']:.0f} tok, answers {a['answer_tokens']} tok")
    lines.append(f"total    {res['total_s']:.0f} s wall")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    corpus, qa = args.data_dir / CORPUS, args.data_dir / QA
    missing = [str(p) for p in (corpus, qa) if not p.is_file()]
    if missing and not {"ingest", "search", "chat"} <= set(args.skip):
        print(f"error: data set not found: {', '.join(missing)}\n"
              f"pass --data-dir DIR (the folder holding {CORPUS} and {QA}; see ../shared/data/README.md)",
              file=sys.stderr)
        return 2

    import torch  # imported here to report the thread count the figures were taken with

    t_start = time.perf_counter()
    res: dict = {"benchmark": "speed", "platform": {
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads()}}
    with tempfile.TemporaryDirectory(prefix="dca-speed-") as tmp:
        work = Path(tmp)
        store_path = None
        if "ingest" not in args.skip:
            log("a. ingest throughput")
            res["ingest"], store_path = bench_ingest(corpus, args, work)
        if "search" not in args.skip:
            if store_path is None:
                log("b. building the store for search (ingest skipped)")
                from dca.rag import SentenceTransformerEmbedder, Store

                store_path = work / "store"
                with Store.create(store_path, SentenceTransformerEmbedder()) as s:
                    s.ingest([corpus])
            log("b. search latency (store)")
            res["search"] = bench_store_search(store_path, qa, args.queries)
        if "index" not in args.skip:
            log("b. search latency (FAISS index on random vectors)")
            res["index"] = bench_index(args.vectors, args.dim, args.queries)
        if "chat" not in args.skip:
            log("c. chat generation")
            res["chat"] = bench_chat(corpus, store_path, qa, args)
    res["total_s"] = time.perf_counter() - t_start

    print("\n".join(summary(res)))
    write_json(args.json_out, res)
    return 0


if __name__ == "__main__":
    run_main(main)
