"""The GGUF embedder (llama.cpp) against sentence-transformers on the bundled all-MiniLM-L6-v2, in one process.

1. Vectors: the first ``--paragraphs`` (1,000) SQuAD dev paragraphs and ``--questions`` (1,000) questions embedded by
   both; cosine of each pair, min and mean (target: >= 0.999 for every text).
2. Ingest throughput: the same paragraphs embedded by raw ``SentenceTransformer.encode`` (batch 32, the store's
   setting) and by :class:`dca.llm.embedding.LlamaCppEmbedder`, alternating ``--rounds`` times; texts/s of each and
   the ratio (target >= 0.8).
3. Cold start (run first, before this process loads torch): a one-shot ``dca rag search`` in a new process on
   ``--store`` (a store of ~2,000 chunks) through each backend (``DCA_EMBEDDER_BACKEND``), wall seconds, median of
   3 runs after one warm-up run each (the GGUF is written, the agreement check recorded; the first 4 SQuAD dev
   questions, one per run); target <= 1.0 s with llama.cpp. And ``dca chat`` one-shot with the store, the same
   way: time to first token as dca reports it (target <= 1.5 s), and through llama.cpp without the prompt cache
   (``DCA_PROMPT_CACHE=off``).

    .venv/bin/python benchmarks/embedder_gguf.py --store STORE [--paragraphs 1000] [--questions 1000] [--rounds 2]
        [--json-out F] [--cold-only]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import default_data_dir, read_jsonl, run_main, write_json


def cold(store: Path, backend: str, argvs: list[list[str]], *, prompt_cache: bool = True) -> tuple[float, list[str]]:
    """The median wall time of new processes running ``dca ARGV --store-dir STORE`` for each ARGV but the first,
    and their outputs; the first is the warm-up (the GGUF written, the agreement recorded)."""
    env = {**os.environ, "DCA_EMBEDDER_BACKEND": backend, "DCA_PROMPT_CACHE": "on" if prompt_cache else "off"}
    times, outs = [], []
    for i, argv in enumerate(argvs):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "dca.cli", *argv, "--store-dir", str(store)], env=env,
                             capture_output=True, text=True, check=True).stdout
        if i:
            times.append(time.perf_counter() - t0)
            outs.append(out)
    return statistics.median(times), outs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--store", type=Path, required=True, help="a store of ~2,000 chunks for the cold-start runs")
    p.add_argument("--paragraphs", type=int, default=1000)
    p.add_argument("--questions", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--cold-only", action="store_true", help="only the cold-start part (3)")
    args = p.parse_args(argv)

    report: dict = {}
    questions = [q["question"] for q in read_jsonl(args.data_dir / "squad_dev_qa.jsonl", 4)]
    search = [["rag", "search", q, "-k", "3"] for q in questions]
    chat = [["chat", q, "--max-tokens", "24"] for q in questions]  # another question each run, as a user asks
    for backend in ("sentence-transformers", "llama.cpp"):
        wall, _ = cold(args.store, backend, search)
        chat_wall, outs = cold(args.store, backend, chat)
        firsts = [float(m.group(1)) for m in (re.search(r"first token ([0-9.]+)s", o) for o in outs) if m]
        first = statistics.median(firsts) if firsts else None
        report[f"cold_{backend}"] = {"search_wall_s": wall, "chat_first_token_s": first, "chat_wall_s": chat_wall}
        print(f"cold start, {backend}: dca rag search {wall:.2f} s wall; dca chat first token "
              f"{'?' if first is None else f'{first:.2f}'} s (median of {len(firsts)}), {chat_wall:.2f} s wall")
    _, outs = cold(args.store, "llama.cpp", chat, prompt_cache=False)
    firsts = [float(m.group(1)) for m in (re.search(r"first token ([0-9.]+)s", o) for o in outs) if m]
    without = statistics.median(firsts) if firsts else None
    report["cold_llama.cpp"]["chat_first_token_s_without_prompt_cache"] = without
    print(f"dca chat first token without the prompt cache (DCA_PROMPT_CACHE=off): {without} s "
          f"(median of {len(firsts)})")
    ratio = report["cold_sentence-transformers"]["search_wall_s"] / report["cold_llama.cpp"]["search_wall_s"]
    report["cold_search_speedup"] = ratio
    print(f"one-shot search: llama.cpp {ratio:.1f}x faster than sentence-transformers")
    if args.cold_only:
        write_json(args.json_out, report)
        return 0

    from sentence_transformers import SentenceTransformer

    from dca.bundled import bundled_embedder_path
    from dca.llm.embedding import LlamaCppEmbedder
    from dca.rag.embed import bundled_gguf_embedder

    paragraphs = [d["text"] for d in read_jsonl(args.data_dir / "squad_dev_corpus.jsonl", args.paragraphs)]
    questions = [q["question"] for q in read_jsonl(args.data_dir / "squad_dev_qa.jsonl", args.questions)]
    st = SentenceTransformer(str(bundled_embedder_path()), device="cpu", local_files_only=True)
    gg = LlamaCppEmbedder(bundled_gguf_embedder())
    report.update(paragraphs=len(paragraphs), questions=len(questions))

    def encode(texts):
        return st.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                         show_progress_bar=False)

    for name, texts in (("paragraphs", paragraphs), ("questions", questions)):
        cos = np.sum(encode(texts) * gg.embed(texts), axis=1)
        report[f"cosine_{name}"] = {"min": float(cos.min()), "mean": float(cos.mean())}
        print(f"{name}: cosine min {cos.min():.6f}, mean {cos.mean():.6f} (n = {len(texts)})")

    encode(paragraphs[:8])
    gg.embed(paragraphs[:8])
    t_st = t_gg = 0.0
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        encode(paragraphs)
        t_st += time.perf_counter() - t0
        t0 = time.perf_counter()
        gg.embed(paragraphs)
        t_gg += time.perf_counter() - t0
    n = args.rounds * len(paragraphs)
    report["ingest"] = {"sentence_transformers_texts_s": n / t_st, "llama_cpp_texts_s": n / t_gg,
                        "ratio": t_st / t_gg}
    print(f"embedding throughput: sentence-transformers {n / t_st:.1f} texts/s, llama.cpp {n / t_gg:.1f} texts/s: "
          f"{t_st / t_gg:.3f}x (target >= 0.8)")
    gg.close()

    write_json(args.json_out, report)
    return 0


if __name__ == "__main__":
    run_main(main)
