"""Verifier quality on held-out questions: AUROC of its scores, and how often its choice among k samples is right.

Reads the ``samples.jsonl`` of a ``dca distill verifier`` run on questions the verifier was not trained on (each
sample labelled right or wrong by the answer checker), scores every sample with each verifier GGUF given, and prints
per verifier: AUROC over all samples (Hanley & McNeil 1982; 0.5 is chance), and over the questions the accuracy of
the answer chosen by best-of-k (the best-scored sample), by verifier-weighted voting (answers clustered, scores
summed), by majority vote (no verifier), and pass@k (the ceiling any choice can reach), all on the same samples.
A process verifier (``--prm``) scores a whole solution as its last step's score, P(Yes) to "Are the steps so far
correct?" after the final step: the score by which beam search picks among finished solutions.

    .venv/bin/python benchmarks/verifier_auroc.py HELDOUT_DIR --verifier verifier.gguf [--verifier other.gguf]
        [--prm prm.gguf] [--limit N] [--json-out F]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from _common import read_jsonl, run_main, write_json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir", type=Path, help="a dca distill verifier output directory (its samples.jsonl)")
    p.add_argument("--verifier", action="append", default=[], help="outcome verifier GGUF (repeatable)")
    p.add_argument("--prm", action="append", default=[], help="process verifier GGUF, scored on the last step "
                   "(repeatable)")
    p.add_argument("--limit", type=int, default=0, help="first N questions (default: all)")
    p.add_argument("--json-out", type=Path, default=None, help="write the figures to this JSON file")
    return p.parse_args(argv)


def choices(rows: list[dict], scores: list[list[float]]) -> dict[str, float]:
    """Accuracy over the questions of best-of-k, verifier-weighted voting and majority voting, and pass@k."""
    from dca.grading import is_equivalent
    from dca.voting import vote

    best = weighted = majority = solved = 0
    for r, ss in zip(rows, scores):
        samples = r["samples"]
        solved += any(s["correct"] for s in samples)
        best += samples[max(range(len(ss)), key=lambda i: ss[i])]["correct"]
        answers = [s["answer"] for s in samples]
        for kind, votes in (("weighted", vote(answers, [math.log(max(x, 1e-300)) for x in ss],
                                              weighted=True)), ("majority", vote(answers))):
            ok = bool(votes) and any(s["correct"] and is_equivalent(s["answer"], votes[0].answer) for s in samples
                                     if s["answer"] is not None)
            if kind == "weighted":
                weighted += ok
            else:
                majority += ok
    n = len(rows)
    return {"best_of_k": best / n, "weighted_vote": weighted / n, "majority": majority / n, "pass_at_k": solved / n}


def measure(rows: list[dict], verifier, *, process: bool = False) -> dict:
    """Score every sample of ``rows`` with ``verifier`` (a :class:`dca.assistant.verifier.Verifier`; ``process``: as a
    PRM, on the whole solution's steps): AUROC (None when every sample is right or every one wrong), the choices of
    :func:`choices`, seconds per question, verifier tokens."""
    from dca.eval.stats import auroc

    t0 = time.perf_counter()
    scores = [verifier.score(r["question"], [s["text"] for s in r["samples"]], process=process).tolist() for r in rows]
    seconds = time.perf_counter() - t0
    flat = [x for ss in scores for x in ss]
    labels = [s["correct"] for r in rows for s in r["samples"]]
    try:
        area = auroc(flat, labels)
    except ValueError:  # one class only
        area = None
    return {"auroc": area, **choices(rows, scores), "seconds_per_question": seconds / len(rows),
            "verifier_tokens": verifier.tokens, "samples": len(flat), "right": sum(labels)}


def summary(name, res: dict, k: int) -> str:
    shown = "n/a" if res["auroc"] is None else f"{res['auroc']:.3f}"
    return (f"{name}: AUROC {shown}; accuracy best-of-{k} {res['best_of_k']:.1%}, weighted vote "
            f"{res['weighted_vote']:.1%}, majority {res['majority']:.1%}, pass@{k} {res['pass_at_k']:.1%}; "
            f"{res['seconds_per_question']:.1f} s a question to score")


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.verifier and not args.prm:
        raise SystemExit("verifier_auroc.py: give at least one --verifier or --prm GGUF")
    from dca.assistant.verifier import Verifier

    rows = read_jsonl(args.data_dir / "samples.jsonl", args.limit)
    k = len(rows[0]["samples"]) if rows else 0
    print(f"{len(rows)} questions x {k} samples from {args.data_dir}; "
          f"{sum(s['correct'] for r in rows for s in r['samples'])} samples right")
    results = {}
    for path, process in [(v, False) for v in args.verifier] + [(v, True) for v in args.prm]:
        v = Verifier(path)
        results[f"{'prm' if process else 'orm'}:{path}"] = res = measure(rows, v, process=process)
        print(summary(path, res, k))
        v.close()
    write_json(args.json_out, {"data_dir": str(args.data_dir), "questions": len(rows), "k": k, "results": results})


if __name__ == "__main__":
    run_main(main)
