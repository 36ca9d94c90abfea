"""Training memory: peak resident memory (RSS) of ``dca distill train`` beside its tokens/s, per configuration.

Each configuration is one ``dca distill train`` process on the first ``--examples`` GSM8K train questions
(reference solutions, the bundled SmolLM2-135M-Instruct by default), run for ``--steps`` steps; its peak RSS is
the kernel's ``ru_maxrss`` of that process (``os.wait4``), its throughput the real tokens trained on per second
of the steps after the first (``metrics.jsonl``). Configurations alternate over ``--rounds`` rounds; medians are
printed, with each throughput as a ratio to the first configuration's, measured in the same run:

``lora (today)``, ``full (today)``
    the settings ``dca distill train`` had before its memory work (``--batch-size 4 --grad-accum 1
    --lora-dropout 0.05``, no gradient checkpointing, glibc's own heap behaviour); ``--today PYTHONPATH=DIR`` runs
    them on a checkout of the code of that time instead.
``lora``, ``full``
    the README's defaults as they are now (``--method full`` for the second, with ``--lr 5e-5``); each one's
    throughput is given as a ratio to its ``(today)`` configuration.
Extra configurations are given as ``--config NAME='FLAGS'`` (``DCA_MALLOC_MMAP_THRESHOLD=N`` among the flags
sets that variable).

    .venv/bin/python benchmarks/train_memory.py [--examples 40] [--steps 3] [--rounds 2] [--json-out F]

Targets (issue 25): LoRA <= 3 GB, full fine-tuning <= 4 GB, throughput >= 0.9 x today's.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import build_gsm8k_sft, default_data_dir, run_main, write_json

TODAY = "DCA_MALLOC_MMAP_THRESHOLD=0 --no-gradient-checkpointing --batch-size 4 --grad-accum 1 --lora-dropout 0.05"
FULL = "--method full --lr 5e-5"
CONFIGS = {
    "lora (today)": TODAY,
    "lora": "",
    "full (today)": f"{TODAY} {FULL}",
    "full": FULL,
}
TARGETS_GB = {"lora": 3.0, "full": 4.0}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="folder holding gsm8k_train.jsonl")
    p.add_argument("--examples", type=int, default=40, help="GSM8K train questions (default: %(default)s)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per run (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="runs of each configuration (default: %(default)s)")
    p.add_argument("-m", "--model", default=None, help="base model (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--config", action="append", default=[], metavar="NAME=FLAGS",
                   help="another configuration: extra dca distill train flags (repeatable)")
    p.add_argument("--only", nargs="*", default=None, help="run only these configurations")
    p.add_argument("--today", default=None, metavar="PYTHONPATH=DIR",
                   help="run the '(today)' configurations on a checkout of the code before the memory work, with its "
                        "own defaults")
    p.add_argument("--code", default=None, metavar="DIR",
                   help="run the other configurations on this copy of the code (PYTHONPATH), not the installed one")
    p.add_argument("--json-out", type=Path, default=None, help="write the figures to this JSON file")
    return p.parse_args(argv)


def run(flags: str, data: Path, run_dir: Path, steps: int, model: str | None) -> dict:
    """One training process: its peak RSS (bytes), tokens/s after the first step, and wall time."""
    env = dict(os.environ)
    args = []
    for word in shlex.split(flags):
        if "=" in word and not word.startswith("-"):
            key, value = word.split("=", 1)
            env[key] = value
        else:
            args.append(word)
    cmd = [sys.executable, "-m", "dca.cli", "distill", "train", str(data), "-o", str(run_dir), "--max-steps",
           str(steps), "--save-every", str(steps), *(["-m", model] if model else []), *args]
    t0 = time.perf_counter()
    # cwd outside the repository: `python -m` puts the cwd first on sys.path, before a PYTHONPATH checkout
    proc = subprocess.Popen(cmd, env=env, cwd=run_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out}\n{err}")
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps_rec = [m for m in metrics if m.get("loss") is not None]
    later = steps_rec[1:] or steps_rec
    # tokens and seconds of each logged step (log_every 1): the cumulative counters' differences
    tokens = [b["tokens"] - a["tokens"] for a, b in zip(steps_rec, steps_rec[1:])] or [steps_rec[0]["tokens"]]
    seconds = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps_rec, steps_rec[1:])] or [later[0]["elapsed_s"]]
    return {"peak_rss_bytes": usage.ru_maxrss * 1024, "tokens_per_s": sum(tokens) / sum(seconds), "wall_s": wall,
            "final_loss": steps_rec[-1]["loss"]}


def main(argv=None) -> None:
    args = parse_args(argv)
    configs = dict(CONFIGS)
    if args.today is not None:
        configs["lora (today)"], configs["full (today)"] = args.today, f"{args.today} {FULL}"
    for item in args.config:
        name, _, flags = item.partition("=")
        configs[name] = flags
    if args.code is not None:
        configs = {k: v if "PYTHONPATH=" in v else f"PYTHONPATH={args.code} {v}" for k, v in configs.items()}
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only}
    with tempfile.TemporaryDirectory(prefix="dca-train-memory-") as tmp:
        work = Path(tmp)
        data = build_gsm8k_sft(args.data_dir, args.examples, work)
        results: dict[str, list[dict]] = {name: [] for name in configs}
        for r in range(args.rounds):
            order = list(configs) if r % 2 == 0 else list(reversed(configs))
            for name in order:
                res = run(configs[name], data, work / f"run-{r}-{len(results[name])}-{name.replace(' ', '_')}",
                          args.steps, args.model)
                results[name].append(res)
                print(f"  round {r + 1} {name:<16} peak {res['peak_rss_bytes'] / 2**30:5.2f} GB  "
                      f"{res['tokens_per_s']:6.1f} tok/s  ({res['wall_s']:.0f} s)", flush=True)
    rates = {name: statistics.median(x["tokens_per_s"] for x in runs) for name, runs in results.items()}
    summary = {}
    print(f"\n{args.examples} GSM8K examples, {args.steps} steps a run, median of {args.rounds} runs; each throughput "
          "as a ratio to its '(today)' configuration (lora's for others), measured in this run")
    print(f"{'configuration':<18} {'peak RSS':>9} {'tok/s':>7} {'ratio':>6}  target; flags")
    for name, runs in results.items():
        peak = statistics.median(x["peak_rss_bytes"] for x in runs) / 2**30
        rate = rates[name]
        base_name = next((b for b in (f"{name} (today)", f"{name.split()[0]} (today)", "lora (today)")
                          if b in rates), None)
        ratio = rate / rates[base_name] if base_name else float("nan")
        target = TARGETS_GB.get(name)
        verdict = "" if target is None else f"<= {target:.0f} GB {'PASS' if peak <= target else 'FAIL'}, "
        if "(today)" not in name:
            verdict += f">= 0.9x {'PASS' if ratio >= 0.9 else 'FAIL'}; "
        print(f"{name:<18} {peak:6.2f} GB {rate:7.1f} {ratio:6.3f}  {verdict}{configs[name] or '(defaults)'}")
        summary[name] = {"flags": configs[name], "peak_rss_gb": round(peak, 3), "tokens_per_s": round(rate, 2),
                         "ratio": round(ratio, 3), "baseline": base_name, "runs": runs}
    write_json(args.json_out, {"examples": args.examples, "steps": args.steps, "rounds": args.rounds,
                               "configs": summary})


if __name__ == "__main__":
    run_main(main)
