"""STaR's sampling speed: tokens/s of ``dca distill star``'s sample stage as a ratio to ``dca eval --samples``.

Both draw k samples per question from the same loaded GGUF (the bundled SmolLM2-135M, or ``-m MODEL``) with the
same settings (the GSM8K system prompt, no thinking, temperature 0.7, repeat penalty 1.0, max_tokens): STaR
through :class:`dca.distill.verifier.Sampler` and :func:`~dca.distill.verifier.append_rows` (its rows written to
``samples.jsonl``), eval through :func:`dca.eval.run_eval` (``predictions.jsonl``). So that both draw the same
samples (tokens/s of the parallel sampler depends on how long its sequences run), STaR's per-question seed is set
to eval's seed for the round (the only change to its path); the script checks that both generated the same number
of tokens. The runs alternate, eval first, for ``--rounds`` rounds over the first ``--questions`` GSM8K train
questions; each side's tokens/s is its generated tokens over its wall time, summed over the rounds. Target: ratio
>= 0.9 (the same sampler, no slower path).

    .venv/bin/python benchmarks/star_sampling.py [-m MODEL] [--k 8] [--questions 3] [--rounds 2]
        [--max-tokens 256] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import default_data_dir, read_jsonl, run_main, write_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("-m", "--model", default=None, help="GGUF path or bundled name (default: the bundled model)")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--questions", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)
    source = args.data_dir / "gsm8k_train.jsonl"
    if not source.exists():
        print(f"{source} not found: pass --data-dir (the folder holding gsm8k_train.jsonl)", file=sys.stderr)
        return 2

    import dca.distill.verifier as verifier
    from dca.assistant.config import GSM8K_SYSTEM_PROMPT
    from dca.distill.generate import load_questions
    from dca.distill.verifier import Sampler, append_rows
    from dca.eval import EvalConfig, run_eval
    from dca.llm import load_llm

    work = Path(tempfile.mkdtemp(prefix="star-sampling-"))
    data = work / "questions.jsonl"
    data.write_text("".join(json.dumps({**r, "id": f"train-{i}"}) + "\n"
                            for i, r in enumerate(read_jsonl(source, args.questions))), encoding="utf-8")
    questions, _ = load_questions(data)
    llm = load_llm(args.model)
    sampler = Sampler(llm, samples=args.k, temperature=0.7, max_tokens=args.max_tokens, repeat_penalty=1.0,
                      system_prompt=GSM8K_SYSTEM_PROMPT)
    verifier.sample_seed = lambda seed, qid, stream: seed  # eval's seed: the same draws on both sides
    totals = {"eval": [0, 0.0], "star": [0, 0.0]}
    for r in range(args.rounds):
        out = work / f"eval-{r}"
        t0 = time.perf_counter()
        run_eval(EvalConfig(task="gsm8k", data=data, model=None, out_dir=out, samples=args.k, think=False,
                            max_tokens=args.max_tokens, sample_temperature=0.7, repeat_penalty=1.0,
                            system_prompt=GSM8K_SYSTEM_PROMPT, seed=r), assistant=_assistant(llm))
        wall = time.perf_counter() - t0
        tokens = sum(json.loads(x)["tokens"]["generated"] for x in (out / "predictions.jsonl").read_text().splitlines())
        totals["eval"][0] += tokens
        totals["eval"][1] += wall

        t0 = time.perf_counter()
        rows, _ = append_rows(work / f"star-{r}.jsonl", questions, lambda q, _r=r: sampler.sample(q, _r), job="sample")
        wall = time.perf_counter() - t0
        tokens = sum(s["tokens"] for row in rows for s in row["samples"])
        totals["star"][0] += tokens
        totals["star"][1] += wall
        print(f"round {r + 1}: eval {totals['eval'][0]} tokens {totals['eval'][1]:.1f}s, "
              f"star {totals['star'][0]} tokens {totals['star'][1]:.1f}s", flush=True)
    if totals["eval"][0] != totals["star"][0]:
        print(f"warning: the two sides generated {totals['eval'][0]} and {totals['star'][0]} tokens; their samples "
              "differ, so tokens/s is not compared on the same work", file=sys.stderr)
    speed = {k: v[0] / v[1] for k, v in totals.items()}
    ratio = speed["star"] / speed["eval"]
    print(f"k = {args.k}, {args.questions} questions x {args.rounds} rounds, max_tokens {args.max_tokens}: "
          f"dca eval --samples {speed['eval']:.1f} tok/s, STaR sampling {speed['star']:.1f} tok/s: "
          f"ratio {ratio:.3f} (target >= 0.9)")
    write_json(args.json_out, {"k": args.k, "questions": args.questions, "rounds": args.rounds,
                               "max_tokens": args.max_tokens, "tokens_per_s": speed, "ratio": ratio,
                               "totals": totals})
    return 0


def _assistant(llm):
    from dca.assistant import Assistant

    return Assistant(model=llm)


if __name__ == "__main__":
    run_main(main)
