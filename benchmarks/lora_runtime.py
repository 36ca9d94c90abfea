"""What a LoRA adapter applied by llama.cpp at run time costs: prompt and decode tokens/s of GGUF models as ratios to
the first one, alternating in one process.

``dca quant export`` keeps a student's adapter apart from a quantized GGUF base (``OUT.gguf`` + ``OUT.lora.gguf``,
:func:`dca.llm.registry.exported_lora` finds the adapter through the manifest); llama.cpp then runs two small extra
matrix products per adapted weight. Compare such an export with the same student merged (``--adapter-mode merge``:
one file, no adapter at run time) in the same and in a finer type. Each model is loaded as dca loads it
(:class:`dca.llm.LlamaCppLLM`), then, per round and model in turn: the same ``--prompt-tokens`` prompt is evaluated
from an empty cache, and ``--decode-tokens`` tokens are decoded greedily one at a time (no stop at EOS, so every model
decodes the same count). Medians over ``--rounds`` rounds.

    .venv/bin/python benchmarks/lora_runtime.py A.gguf B.gguf [C.gguf ...] [--rounds 5] [--prompt-tokens 256]
        [--decode-tokens 128] [--threads N] [--json-out F]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from _common import run_main, write_json

PROMPT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
          "clips did Natalia sell altogether in April and May? ")


def _round(llm, prompt_ids: list[int], decode_tokens: int) -> tuple[float, float]:
    """(prompt tokens/s, decode tokens/s) of one pass."""
    import numpy as np

    llama = llm.llama
    llama.reset()
    t0 = time.perf_counter()
    llama.eval(prompt_ids)
    prompt_s = time.perf_counter() - t0
    tok = int(np.argmax(llama.scores[llama.n_tokens - 1]))
    t0 = time.perf_counter()
    for _ in range(decode_tokens):
        llama.eval([tok])
        tok = int(np.argmax(llama.scores[llama.n_tokens - 1]))
    decode_s = time.perf_counter() - t0
    return len(prompt_ids) / prompt_s, decode_tokens / decode_s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path, help="GGUF files; the first is the baseline")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)

    from dca.llm import LlamaCppLLM

    n_ctx = args.prompt_tokens + args.decode_tokens + 8
    llms = [LlamaCppLLM(m, n_ctx=n_ctx, n_threads=args.threads) for m in args.models]
    ids = llms[0].llama.tokenize((PROMPT * 64).encode(), add_bos=True)[:args.prompt_tokens]
    results: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(llms))}
    for r in range(args.rounds):
        for i, llm in enumerate(llms):
            results[i].append(_round(llm, ids, args.decode_tokens))
        print(f"round {r + 1}/{args.rounds}", flush=True)
    rows = []
    base_prompt = statistics.median(x for x, _ in results[0])
    base_decode = statistics.median(y for _, y in results[0])
    for i, llm in enumerate(llms):
        prompt = statistics.median(x for x, _ in results[i])
        decode = statistics.median(y for _, y in results[i])
        rows.append({"model": str(args.models[i]), "lora": str(llm.lora_path) if llm.lora_path else None,
                     "size_bytes": args.models[i].stat().st_size + (llm.lora_path.stat().st_size if llm.lora_path
                                                                    else 0),
                     "prompt_tok_s": round(prompt, 1), "decode_tok_s": round(decode, 1),
                     "prompt_ratio": round(prompt / base_prompt, 3), "decode_ratio": round(decode / base_decode, 3)})
        llm.close()
    print(f"{'model':<48} {'LoRA':>5} {'MB':>7} {'prompt tok/s':>13} {'ratio':>6} {'decode tok/s':>13} {'ratio':>6}")
    for row in rows:
        lora = "yes" if row["lora"] else "no"
        print(f"{Path(row['model']).name[-48:]:<48} {lora:>5} {row['size_bytes'] / 1e6:>7.1f} "
              f"{row['prompt_tok_s']:>13.1f} {row['prompt_ratio']:>6.3f} {row['decode_tok_s']:>13.1f} "
              f"{row['decode_ratio']:>6.3f}")
    if args.json_out:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        write_json(args.json_out, {"settings": settings | {"models": [str(m) for m in args.models]}, "rows": rows})
    return 0


if __name__ == "__main__":
    run_main(main)
