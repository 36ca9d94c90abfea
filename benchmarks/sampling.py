"""Cost of self-consistency: wall time of k samples as a ratio to 1 sample on the same question.

Both use :func:`dca.llm.sampling.sample_parallel` (k sequences sharing one prompt evaluation) on the bundled
SmolLM2-135M GGUF (or ``-m MODEL``), with the GSM8K prompt that ``dca eval`` uses, the same max_tokens and seed,
alternating 1 and k per question; the median over questions of the per-question ratio is the headline (target for
k = 8: <= 4), with the ratio of the median wall times and the time per generated token beside it.

    .venv/bin/python benchmarks/sampling.py [-m MODEL] [--k 8] [--questions 5] [--max-tokens 256] [--json-out F]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _common import default_data_dir, read_jsonl, run_main, write_json

SYSTEM = "Solve the problem step by step, then give the final answer as \\boxed{N}."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("-m", "--model", default=None, help="GGUF path or bundled name (default: the bundled model)")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--questions", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)
    data = args.data_dir / "gsm8k_test.jsonl"
    if not data.exists():
        print(f"{data} not found: pass --data-dir (the folder holding gsm8k_test.jsonl)", file=sys.stderr)
        return 2

    from dca.llm import LlamaCppLLM, resolve_model
    from dca.llm.sampling import sample_parallel

    llm = LlamaCppLLM(resolve_model(args.model))
    sample_parallel(llm.llama, llm.render([{"role": "user", "content": "hi"}]), n=2, max_tokens=4)  # warm-up
    rows = []
    for item in read_jsonl(data, args.questions):
        prompt = llm.render([{"role": "system", "content": SYSTEM}, {"role": "user", "content": item["question"]}])
        timing = {}
        for n in (1, args.k):
            t0 = time.perf_counter()
            outs = sample_parallel(llm.llama, prompt, n=n, max_tokens=args.max_tokens, temperature=0.7, seed=0)
            timing[n] = (time.perf_counter() - t0, sum(o.tokens for o in outs))
        rows.append({"prompt_tokens": llm.count_tokens(prompt), "one_s": timing[1][0], "one_tokens": timing[1][1],
                     "k_s": timing[args.k][0], "k_tokens": timing[args.k][1],
                     "ratio": timing[args.k][0] / timing[1][0]})
        r = rows[-1]
        print(f"prompt {r['prompt_tokens']:4d} tok   1 sample {r['one_s']:6.2f} s ({r['one_tokens']} tok)   "
              f"{args.k} samples {r['k_s']:6.2f} s ({r['k_tokens']} tok)   ratio {r['ratio']:.2f}", flush=True)
    ratio = statistics.median(r["ratio"] for r in rows)
    of_medians = statistics.median(r["k_s"] for r in rows) / statistics.median(r["one_s"] for r in rows)
    per_token = (statistics.median(r["k_s"] / r["k_tokens"] for r in rows)
                 / statistics.median(r["one_s"] / r["one_tokens"] for r in rows))
    print(f"\nmedian over questions of wall time, {args.k} samples / 1 sample: {ratio:.2f} (target <= 4)  "
          f"{'PASS' if ratio <= 4 else 'FAIL'}")
    print(f"ratio of the median wall times: {of_medians:.2f}; "
          f"time per generated token, {args.k} samples / 1: {per_token:.2f}")
    write_json(args.json_out, {"model": llm.name, "k": args.k, "max_tokens": args.max_tokens, "rows": rows,
                               "ratio": ratio,
                               "ratio_of_medians": of_medians, "per_token_ratio": per_token})
    return 0


if __name__ == "__main__":
    run_main(main)
