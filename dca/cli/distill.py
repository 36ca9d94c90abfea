"""``dca distill ...``: the reasoning-distillation commands (a thin layer over :mod:`dca.distill` and
:mod:`dca.pipeline`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.text import Text

from ..distill.filter import FilterConfig
from ..distill.generate import GenerateConfig
from ..distill.loop import TrainConfig
from ..distill.rl import RLConfig
from ..distill.verifier import VerifierDataConfig
from ..star import StarConfig
from .common import (
    Status,
    err,
    handles_errors,
    interrupted,
    not_written,
    out,
    print_error,
    print_table,
    print_warning,
    table,
)
from .options import config_option, with_default
from .progress import ProgressView

app = typer.Typer(
    help="Reasoning: generate or import chain-of-thought traces, verify and filter them, distill them (SFT).",
    no_args_is_help=True,
)

# -- generate ------------------------------------------------------------------------------------------------


@app.command("generate")
@handles_errors
def distill_generate(
    questions: Path = typer.Argument(..., help="JSONL questions: GSM8K (question, answer '#### N'), MATH (problem, answer or solution with \\boxed{}) or messages (first user turn; gold or answer optional); optional id."),
    out_path: Path = typer.Option(..., "-o", "--out", help="Trace JSONL to append to; re-running the same command resumes it."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help=with_default("openai | gguf | hf.", GenerateConfig, "teacher")),
    teacher_model: Optional[str] = typer.Option(None, "--teacher-model", help="Model name (openai), GGUF name or path (gguf) or model directory (hf)."),
    model: Optional[str] = typer.Option(None, "-m", "--model", help="Same as --teacher-model \\[default for gguf: bundled smollm2-135m-instruct]."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible API root, e.g. http://127.0.0.1:8080/v1."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help=with_default("Environment variable holding the API key; may be unset for local servers.", GenerateConfig, "api_key_env")),
    samples: Optional[int] = typer.Option(None, "--samples", help=with_default("Samples per question.", GenerateConfig, "samples")),
    temperature: Optional[float] = typer.Option(None, "--temperature", help=with_default("0 is greedy.", GenerateConfig, "temperature")),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help=with_default("Most generated tokens per sample, thinking included.", GenerateConfig, "max_tokens")),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="System turn; '' sends none \\[default: reason step by step, answer in \\boxed{}]."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help=with_default("Requests in flight (openai); local teachers run one at a time.", GenerateConfig, "concurrency")),
    timeout_s: Optional[float] = typer.Option(None, "--timeout", help=with_default("Seconds per HTTP request.", GenerateConfig, "timeout_s")),
    max_retries: Optional[int] = typer.Option(None, "--max-retries", help=with_default("Retries on 429, 5xx and connection errors.", GenerateConfig, "max_retries")),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use the first N valid questions \\[default: all]."),
    seed: Optional[int] = typer.Option(None, "--seed", help=with_default("Base seed; each sample's seed is derived from it, the id and the sample index.", GenerateConfig, "seed")),
    config_path: Optional[Path] = config_option("GenerateConfig"),
):
    """Sample reasoning traces from a teacher model into a trace JSONL, N per question, resumably.

    Each (question id, sample) is appended once as a whole line; an interrupted run (Ctrl-C, kill, crash)
    continues where it stopped when the same command is run again. meta.correct records whether the final
    answer matches the gold answer; filter on it with: dca distill filter
    """
    from ..config import load_config
    from ..distill.generate import GenerateConfig, generate, load_teacher

    if model is not None and teacher_model is not None and model != teacher_model:
        print_error("give the model once: -m/--model or --teacher-model")
        raise typer.Exit(2)
    given = {"teacher": teacher, "teacher_model": teacher_model or model, "base_url": base_url, "api_key_env": api_key_env,
             "samples": samples, "temperature": temperature, "max_tokens": max_tokens, "system_prompt": system_prompt,
             "concurrency": concurrency, "timeout_s": timeout_s, "max_retries": max_retries, "limit": limit, "seed": seed}
    cfg = load_config(GenerateConfig, config_path, questions=questions, out=out_path, **given)
    with Status("loading the teacher"):
        teacher_obj = load_teacher(cfg)
    try:
        with ProgressView(err) as view:
            report = generate(cfg, teacher_obj, progress=view)
    except KeyboardInterrupt:
        raise interrupted(f"finished samples are kept in {cfg.out}; run the same command to continue") from None
    finally:
        teacher_obj.close()
    for b in report.bad_lines:
        print_warning("skipped", str(b))
    acc = "no gold answers" if report.acceptance is None else f"{report.accepted}/{report.judged} accepted ({report.acceptance:.1%})"
    out.print(f"{report.written} traces written to {cfg.out}, {report.skipped} already there, {report.failed} failed; "
              f"{acc}; {report.completion_tokens} tokens in {report.wall_s:.1f}s")
    if report.failed:
        for e in report.errors[:3]:
            print_warning("failed", str(e))
        print_error(f"{report.failed} samples failed; run the same command again to retry them")
        raise typer.Exit(1)

# -- verifier ------------------------------------------------------------------------------------------------


@app.command("verifier")
@handles_errors
def distill_verifier(
    questions: Path = typer.Argument(..., help="JSONL training questions with gold answers (the shapes of dca distill generate), e.g. gsm8k_train.jsonl."),
    out_dir: Path = typer.Option(..., "-o", "--out-dir", help="Directory for samples.jsonl, orm.jsonl (and prm.jsonl), report.json; re-running the same command resumes it."),
    model: Optional[str] = typer.Option(None, "-m", "--model", help="The student whose samples the verifier will judge: GGUF path or name \\[default: the bundled model]."),
    samples: Optional[int] = typer.Option(None, "--samples", help=with_default("Samples per question.", VerifierDataConfig, "samples")),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use the first N questions with a gold answer \\[default: all]."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help=with_default("Temperature of the samples.", VerifierDataConfig, "temperature")),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help=with_default("Most tokens per sample.", VerifierDataConfig, "max_tokens")),
    repeat_penalty: Optional[float] = typer.Option(None, "--repeat-penalty", help=with_default("Repeat penalty of the samples; 1 is off.", VerifierDataConfig, "repeat_penalty")),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="The student's system prompt \\[default: the GSM8K task's]."),
    tools: Optional[str] = typer.Option(None, "--tools", help="Tools answered while sampling, as at test time: calculator \\[default: none]."),
    process: bool = typer.Option(False, "--process", help="Also label each step by rollouts (Math-Shepherd) and write prm.jsonl for a process verifier.", metavar=""),
    rollouts: Optional[int] = typer.Option(None, "--rollouts", help=with_default("Continuations per step with --process.", VerifierDataConfig, "rollouts")),
    seed: Optional[int] = typer.Option(None, "--seed", help=with_default("Sampling seed; each question's is derived from it and its id.", VerifierDataConfig, "seed")),
    max_wrong: Optional[int] = typer.Option(None, "--max-wrong", help="At most N wrong solutions per question in orm.jsonl (all right ones are kept); changing it rewrites the examples without sampling again \\[default: all]."),
    force: bool = typer.Option(False, "--force", help="Start over, deleting what an earlier run wrote in -o.", metavar=""),
):
    """Sample a student's solutions to training questions, label them with the answer checker, and write a
    verifier's training data (messages answered Yes/No) for: dca distill train

    The verifier is then trained and exported like any student, and scores samples at test time:

      dca distill train DIR/orm.jsonl -m student.F16.gguf -o verifier --method full
      dca quant export verifier/model -t Q8_0 -o verifier.gguf
      dca eval --task gsm8k --data gsm8k_test.jsonl -m student.gguf --samples 8 --verifier verifier.gguf -o runs/wv8
    """
    from ..distill.verifier import VerifierDataConfig, make_verifier_data

    given = {"model": model, "samples": samples, "limit": limit, "temperature": temperature, "max_tokens": max_tokens,
             "repeat_penalty": repeat_penalty, "system_prompt": system_prompt, "tools": tools, "rollouts": rollouts,
             "seed": seed, "max_wrong": max_wrong}
    cfg = VerifierDataConfig(questions=questions, out_dir=out_dir, process=process, force=force,
                             **{k: v for k, v in given.items() if v is not None})
    try:
        with ProgressView(err) as view:
            report = make_verifier_data(cfg, progress=view)
    except KeyboardInterrupt:
        raise interrupted(f"finished questions are kept in {cfg.out_dir / 'samples.jsonl'}; run the same command "
                          "to continue") from None
    for b in report.bad_lines:
        print_warning("skipped", b)
    files = "orm.jsonl" + (", prm.jsonl" if cfg.process else "")
    out.print(f"{report.questions} questions ({report.skipped} done before), {report.samples} samples, "
              f"{report.correct} right ({report.correct / max(1, report.samples):.1%}), pass@{cfg.samples} "
              f"{report.pass_at_k:.1%}; wrote {report.orm_examples} outcome examples"
              + (f" and {report.prm_examples} step examples ({report.rollouts} rollouts)" if cfg.process else "")
              + f" to {cfg.out_dir} ({files}) in {report.seconds:.0f}s")

# -- rl ------------------------------------------------------------------------------------------------------


@app.command("rl")
@handles_errors
def distill_rl(
    questions: Path = typer.Argument(..., help="JSONL training questions with gold answers (the shapes of dca distill generate), e.g. gsm8k_train.jsonl."),
    out_dir: Optional[Path] = typer.Option(None, "-o", "--out-dir", help="Run directory: config.yaml, manifest.json, metrics.jsonl, rewards.png, checkpoints/, then adapter/ or model/. Re-running the same command continues it."),
    model: Optional[str] = typer.Option(None, "-m", "--model", help=with_default("The starting policy: HF directory, GGUF or name from dca models.", RLConfig, "model")),
    method: Optional[str] = typer.Option(None, "--method", help=with_default("lora | full.", RLConfig, "method")),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help=with_default("LoRA rank.", RLConfig, "lora_r")),
    samples: Optional[int] = typer.Option(None, "--samples", help=with_default("Completions per question: GRPO's group.", RLConfig, "samples")),
    questions_per_step: Optional[int] = typer.Option(None, "--questions-per-step", help=with_default("Questions per optimizer step on each process.", RLConfig, "questions_per_step")),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help=with_default("Most tokens per completion.", RLConfig, "max_tokens")),
    temperature: Optional[float] = typer.Option(None, "--temperature", help=with_default("Temperature of the completions.", RLConfig, "temperature")),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate, constant \\[default: 1e-6 full, 1e-5 LoRA]."),
    beta: Optional[float] = typer.Option(None, "--beta", help=with_default("KL coefficient to the starting policy; 0 loads no reference model.", RLConfig, "beta")),
    format_weight: Optional[float] = typer.Option(None, "--format-weight", help=with_default("Weight of the format reward (answer in \\boxed{}) beside the checker's 0/1.", RLConfig, "format_weight")),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help=with_default("Optimizer steps; raise it to train a finished run further.", RLConfig, "max_steps")),
    save_every: Optional[int] = typer.Option(None, "--save-every", help=with_default("Checkpoint every N steps.", RLConfig, "save_every")),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use the first N questions with a gold answer \\[default: all]."),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="System turn of every prompt \\[default: the GSM8K task's]."),
    precision: Optional[str] = typer.Option(None, "--precision", help=with_default("auto | bf16 | fp32.", RLConfig, "precision")),
    seed: Optional[int] = typer.Option(None, "--seed", help=with_default("Seed of the data order, the sampling and the adapter.", RLConfig, "seed")),
    force: bool = typer.Option(False, "--force", help="Start over, deleting what an earlier run wrote in -o.", metavar=""),
    config_path: Optional[Path] = config_option("RLConfig"),
):
    """Reinforcement learning with verifiable rewards: GRPO (TRL's GRPOTrainer), the answer checker as the reward.

    Each step answers --questions-per-step questions --samples times, rewards each completion 1 when the
    checker verifies its answer (plus --format-weight when it is in \\boxed{}), and moves the policy toward the
    completions better than their group's mean, with a KL penalty (--beta) to the starting policy. Reward,
    accuracy, KL and completion length go to metrics.jsonl and rewards.png; checkpoints every --save-every
    steps; the same command continues. Export the result like any training run:

      dca distill rl gsm8k_train.jsonl -m student.F16.gguf --method full -o runs/grpo
      dca quant export runs/grpo/model -t Q4_K_M -o grpo.Q4_K_M.gguf

    Several processes (DDP): accelerate launch --num_processes 2 -m dca.cli distill rl ...
    """
    from ..config import load_config
    from ..distill.rl import run_rl

    given = {"model": model, "method": method, "lora_r": lora_r, "samples": samples,
             "questions_per_step": questions_per_step, "max_tokens": max_tokens, "temperature": temperature, "lr": lr,
             "beta": beta, "format_weight": format_weight, "max_steps": max_steps, "save_every": save_every,
             "limit": limit, "system_prompt": system_prompt, "precision": precision, "seed": seed,
             "force": force or None}
    if out_dir is None and config_path is None:
        raise typer.BadParameter("give -o/--out-dir (or -c RUN/config.yaml)", param_hint="-o/--out-dir")
    cfg = load_config(RLConfig, config_path, questions=questions, out_dir=out_dir,
                      **{k: v for k, v in given.items() if v is not None})
    with ProgressView(err, transient=True) as view:
        try:
            result = run_rl(cfg, progress=view)
        except KeyboardInterrupt:
            raise interrupted(f"checkpoints are kept in {cfg.out_dir / 'checkpoints'}; run the same command to "
                              "continue from the newest") from None
    last = result.last
    figures = ", ".join(f"{k} {last[k]:.3f}" for k in ("reward", "accuracy", "kl", "completion_length")
                        if last.get(k) is not None)
    out.print(f"{result.steps} GRPO steps in {result.seconds:.0f}s ({figures}); policy in {result.output}; "
              f"curves in {cfg.out_dir / 'rewards.png'}")

# -- star ----------------------------------------------------------------------------------------------------


@app.command("star")
@handles_errors
def distill_star(
    questions: Path = typer.Argument(..., help="JSONL training questions with gold answers (the shapes of dca distill generate), e.g. gsm8k_train.jsonl."),
    out_dir: Path = typer.Option(..., "-o", "--out-dir", help="Directory of the run: iter-N/ per iteration, star.json, accuracy.png; re-running the same command continues it."),
    model: Optional[str] = typer.Option(None, "-m", "--model", help="The starting model that iteration 1 samples from: GGUF path or name \\[default: the bundled model]."),
    base: Optional[str] = typer.Option(None, "--base", help="The weights each iteration fine-tunes from, e.g. the F16 export of a quantized -m \\[default: -m]."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help=with_default("STaR iterations; raise it to continue a finished run.", StarConfig, "iterations")),
    samples: Optional[int] = typer.Option(None, "--samples", help=with_default("Samples per question.", StarConfig, "samples")),
    keep: Optional[int] = typer.Option(None, "--keep", help=with_default("At most N distinct right samples of a question are trained on.", StarConfig, "keep")),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use the first N questions with a gold answer \\[default: all]."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help=with_default("Temperature of the samples.", StarConfig, "temperature")),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help=with_default("Most tokens per sample (and per evaluated answer).", StarConfig, "max_tokens")),
    repeat_penalty: Optional[float] = typer.Option(None, "--repeat-penalty", help=with_default("Repeat penalty of the samples; 1 is off.", StarConfig, "repeat_penalty")),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="System prompt sampled, trained and evaluated with \\[default: the GSM8K task's]."),
    tools: Optional[str] = typer.Option(None, "--tools", help="Tools answered while sampling and evaluating: calculator \\[default: none]."),
    rationalize: Optional[bool] = typer.Option(None, "--rationalize/--no-rationalize", help="Ask the questions with no right sample again with the gold answer as a hint \\[default: on].", metavar=""),
    hint_samples: Optional[int] = typer.Option(None, "--hint-samples", help=with_default("Samples per rationalization.", StarConfig, "hint_samples")),
    continue_training: Optional[bool] = typer.Option(None, "--continue-training/--from-base", help="Fine-tune each iteration from the one before, or from --base as STaR does \\[default: from base].", metavar=""),
    method: Optional[str] = typer.Option(None, "--method", help="lora | qlora | full, as dca distill train \\[default: lora]."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate, as dca distill train."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over each iteration's data, as dca distill train."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps per iteration; overrides --epochs."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per training row, as dca distill train."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Rows per training step, as dca distill train."),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto | bf16 | fp16 | fp32, as dca distill train."),
    qtype: Optional[str] = typer.Option(None, "--qtype", help=with_default("Quant type of the model sampled and evaluated (F16: no quantization).", StarConfig, "qtype")),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Held-out questions evaluated before the first iteration and after each \\[default: no evaluation]."),
    eval_task: Optional[str] = typer.Option(None, "--eval-task", help=with_default("dca eval task of --eval-data.", StarConfig, "eval_task")),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Evaluate the first N held-out questions \\[default: all]."),
    eval_samples: Optional[int] = typer.Option(None, "--eval-samples", help=with_default("Samples per held-out question: 1 is greedy, k > 1 adds maj@k.", StarConfig, "eval_samples")),
    seed: Optional[int] = typer.Option(None, "--seed", help=with_default("Sampling and training seed.", StarConfig, "seed")),
    force: bool = typer.Option(False, "--force", help="Start over, deleting what an earlier run wrote in -o.", metavar=""),
    config_path: Optional[Path] = config_option("StarConfig"),
):
    """Self-improvement by STaR: the model's own verified solutions become its next training data.

    Each iteration samples --samples solutions per training question from the current model, keeps those the
    answer checker verifies (at most --keep distinct ones per question), asks the failed questions again with
    the gold answer as a hint and keeps verified rationales without the hint, fine-tunes, exports, and
    evaluates on --eval-data against the iteration before (paired bootstrap). Every stage is kill-safe: the
    same command continues where it stopped.

      dca distill star gsm8k_train.jsonl -m student.Q4_K_M.gguf --base student.F16.gguf --method full \\
          --eval-data gsm8k_test.jsonl --eval-limit 500 -o runs/star
    """
    from ..config import load_config
    from ..star import run_star

    train = {k: v for k, v in {"method": method, "lr": lr, "epochs": epochs, "max_steps": max_steps,
                               "seq_len": seq_len, "batch_size": batch_size, "precision": precision}.items()
             if v is not None}
    given = {"model": model, "base": base, "iterations": iterations, "samples": samples, "keep": keep, "limit": limit,
             "temperature": temperature, "max_tokens": max_tokens, "repeat_penalty": repeat_penalty,
             "system_prompt": system_prompt, "tools": tools, "rationalize": rationalize, "hint_samples": hint_samples,
             "continue_training": continue_training, "qtype": qtype, "eval_data": eval_data, "eval_task": eval_task,
             "eval_limit": eval_limit, "eval_samples": eval_samples, "seed": seed, "force": force or None}
    cfg = load_config(StarConfig, config_path, questions=questions, out_dir=out_dir,
                      **{k: v for k, v in given.items() if v is not None})
    if train:
        from dataclasses import replace

        cfg = replace(cfg, train={**cfg.train, **train})
    with ProgressView(err, transient=True) as view:
        try:
            report = run_star(cfg, progress=view)
        except KeyboardInterrupt:
            raise interrupted(f"finished work is kept in {cfg.out_dir}; run the same command to continue") from None
    for b in report.bad_lines:
        print_warning("skipped", b)
    t = table("iteration", "pass@k", "kept", "rationales", "held-out", "vs before", "verdict")
    for it in report.iterations:
        acc = (f"{it.accuracy:.1%} [{it.accuracy_low:.1%}, {it.accuracy_high:.1%}]" if it.accuracy is not None
               else "")
        diff = f"{it.diff * 100:+.1f} [{it.low * 100:+.1f}, {it.high * 100:+.1f}]" if it.diff is not None else ""
        t.add_row(str(it.iteration), f"{it.pass_at_k:.1%}" if it.iteration else "", str(it.kept) if it.iteration
                  else "", str(it.rationales_kept) if it.iteration else "", acc, diff, it.verdict or "")
    print_table(t)
    out.print(f"wrote {cfg.out_dir}: iter-N/ (samples, sft.jsonl, train/, model, eval/, report.json), star.json"
              + (", accuracy.png" if cfg.eval_data is not None else ""))

# -- import --------------------------------------------------------------------------------------------------


@app.command("import")
@handles_errors
def distill_import(
    src: Path = typer.Argument(..., help="JSONL to convert: GSM8K or MATH solutions, R1-style think/final traces, ShareGPT conversations or messages."),
    out_path: Path = typer.Option(..., "-o", "--out", help="Trace JSONL to write (atomically)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="auto | gsm8k | math | think-final | sharegpt | messages \\[default: auto, by keys, line by line]."),
    force: bool = typer.Option(False, "--force", help="Overwrite -o/--out if it exists.", metavar=""),
    calculator_notes: bool = typer.Option(False, "--keep-calculator-notes", metavar="",
                                          help="Keep GSM8K's calculator notes (<<48/2=24>>) in the solutions, so "
                                               "that a student trained on them writes notes for --tools calculator."),
):
    """Convert existing solutions or reasoning traces into a dca trace file for: dca distill filter

    GSM8K solutions become worked answers ending in \\boxed{N} (calculator notes removed unless
    --keep-calculator-notes, gold N); think/final
    traces keep their thinking, and an unclosed think block marks a trace truncated. Lines that cannot be
    converted are reported with their line numbers and skipped.
    """
    from ..distill.importers import import_traces

    with ProgressView(err, transient=True) as view:
        try:
            report = import_traces(src, out_path, force=force, calculator_notes=calculator_notes, progress=view,
                                   **({"fmt": fmt} if fmt is not None else {}))
        except KeyboardInterrupt:
            raise interrupted(not_written(out_path)) from None
    for b in report.bad:
        print_warning("skipped", str(b))
    shapes = ", ".join(f"{n} {shape}" for shape, n in report.formats.items())
    out.print(f"wrote {report.written} traces ({shapes}) to {report.out}: {report.closed} closed, "
              f"{report.with_gold} with a gold answer; {len(report.bad)} of {report.lines} lines skipped")

# -- filter --------------------------------------------------------------------------------------------------


@app.command("filter")
@handles_errors
def distill_filter(
    traces: list[Path] = typer.Argument(..., help="dca trace files (from dca distill generate or import)."),
    out_path: Path = typer.Option(..., "-o", "--out", help="messages JSONL of the kept traces, thinking inside the assistant turn."),
    decontaminate: Optional[list[Path]] = typer.Option(None, "--decontaminate", help="JSONL of held-out questions (question/problem fields, e.g. a test set); repeatable."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Drop traces whose thinking + answer is longer \\[default: no limit]."),
    max_per_question: Optional[int] = typer.Option(None, "--max-per-question", help="Keep at most K traces per question id \\[default: all]."),
    prefer_shorter: Optional[bool] = typer.Option(None, "--prefer-shorter/--input-order", help="Which traces win duplicates and the per-question cap \\[default: input order].", metavar=""),
    near_dup_threshold: Optional[float] = typer.Option(None, "--near-dup-threshold", help=with_default("MinHash Jaccard over word 5-grams at or above which a trace is a near duplicate.", FilterConfig, "near_dup_threshold")),
    max_repetition: Optional[float] = typer.Option(None, "--max-repetition", help=with_default("Highest fraction of repeated word 4-grams kept.", FilterConfig, "max_repetition")),
    report_dir: Optional[Path] = typer.Option(None, "--report-dir", help="Report directory \\[default: OUT with the suffix .report]."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Hugging Face tokenizer (name or directory) to count tokens \\[default: an approximation]."),
    force: bool = typer.Option(False, "--force", help="Overwrite -o/--out and the report files.", metavar=""),
    config_path: Optional[Path] = config_option("FilterConfig"),
):
    """Keep the traces worth training on: correct, complete, not too long, not repetitive, not duplicated, not contaminated.

    Each trace gets one verdict, the first failing check of: contaminated (8-gram overlap with --decontaminate),
    no_gold, truncated, no_answer, wrong_answer, too_long, repetitive, duplicate, near_duplicate,
    per_question_cap. Writes OUT and, in the report directory, verdicts.jsonl, report.json, lengths.png and
    config.json.
    """
    from ..config import load_config
    from ..distill.filter import REASONS, FilterConfig, filter_traces

    given = {"decontaminate": decontaminate or None, "max_tokens": max_tokens, "max_per_question": max_per_question,
             "prefer_shorter": prefer_shorter, "near_dup_threshold": near_dup_threshold, "max_repetition": max_repetition,
             "report_dir": report_dir, "tokenizer": tokenizer, "force": force or None}
    cfg = load_config(FilterConfig, config_path, traces=traces, out=out_path, **given)
    with ProgressView(err) as view:
        try:
            report = filter_traces(cfg, progress=view)
        except KeyboardInterrupt:
            raise interrupted(not_written(cfg.out)) from None
    for b in report.bad:
        print_warning("skipped", str(b))
    t = table("verdict", "traces")
    t.add_row(Text("kept", style="green"), str(report.kept))
    for reason in REASONS:
        if report.dropped[reason]:
            t.add_row(reason, str(report.dropped[reason]))
    print_table(t)
    kept = report.tokens["kept"]
    lengths = f"; kept traces: median {kept['median']:.0f}, max {kept['max']} tokens" if kept["n"] else ""
    out.print(f"kept {report.kept} of {report.total} traces in {report.wall_s:.1f}s{lengths}; counted by {report.token_counter}")
    out.print(f"wrote {cfg.out} and {cfg.report_dir}: verdicts.jsonl report.json lengths.png config.json")

# -- train ---------------------------------------------------------------------------------------------------


def _train_interrupted(out_dir: Path) -> typer.Exit:
    """The Ctrl-C message of a training run: its last checkpoint, or that none was written yet."""
    from ..distill import rundir

    kept = rundir.checkpoints(out_dir)
    if kept:
        return interrupted(f"step {kept[-1][0]} is checkpointed in {kept[-1][1]}; run the same command to "
                           "continue from it")
    return interrupted("before the first step: nothing to keep; run the same command to start again")


@app.command("train")
@handles_errors
def distill_train(
    data: Optional[list[Path]] = typer.Argument(None, help="JSONL training data: dca traces, messages, conversations (ShareGPT), prompt/completion or text lines, detected by key."),
    out_dir: Optional[Path] = typer.Option(None, "-o", "--out-dir", help="Run directory: config.yaml, manifest.json, metrics.jsonl, loss.png, adapter/, checkpoints/. Re-running the same command continues it."),
    model: Optional[str] = typer.Option(None, "-m", "--model", help=with_default("Base model: HF model directory, GGUF file or name from 'dca models'.", TrainConfig, "model")),
    method: Optional[str] = typer.Option(None, "--method", help=with_default("lora | full.", TrainConfig, "method")),
    qlora: Optional[bool] = typer.Option(None, "--qlora", help=escape("LoRA on a 4-bit NF4 base (CUDA, bitsandbytes: pip install 'dca[qlora]')."), metavar=""),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help=with_default("Adapter rank.", TrainConfig, "lora_r")),
    lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", help=with_default("Adapter scale numerator; updates are scaled by alpha/r.", TrainConfig, "lora_alpha")),
    lora_dropout: Optional[float] = typer.Option(None, "--lora-dropout", help=with_default("Dropout on the adapter's input.", TrainConfig, "lora_dropout")),
    target_modules: Optional[str] = typer.Option(None, "--target-modules", help="Comma-separated linear layers to adapt, or all-linear \\[default: q,k,v,o,gate,up,down projections]."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help=with_default("Tokens per row; longer examples are cut.", TrainConfig, "seq_len")),
    packing: Optional[bool] = typer.Option(None, "--packing/--no-packing", help="Pack several examples per row, attention kept within each \\[default: packing].", metavar=""),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=with_default("Rows per micro-batch.", TrainConfig, "batch_size")),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help=with_default("Micro-batches per optimizer step.", TrainConfig, "grad_accum")),
    epochs: Optional[float] = typer.Option(None, "--epochs", help=with_default("Passes over the data.", TrainConfig, "epochs")),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps; overrides --epochs."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate \\[default: 2e-4 lora, 2e-5 full]."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help=with_default("cosine | linear | constant, after warmup.", TrainConfig, "schedule")),
    warmup_ratio: Optional[float] = typer.Option(None, "--warmup-ratio", help=with_default("Fraction of steps of linear warmup.", TrainConfig, "warmup_ratio")),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help=with_default("AdamW weight decay.", TrainConfig, "weight_decay")),
    max_grad_norm: Optional[float] = typer.Option(None, "--max-grad-norm", help=with_default("Gradient clipping norm; 0 disables.", TrainConfig, "max_grad_norm")),
    eval_fraction: Optional[float] = typer.Option(None, "--eval-fraction", help=with_default("Fraction of question ids held out for the eval loss.", TrainConfig, "eval_fraction")),
    eval_data: Optional[list[Path]] = typer.Option(None, "--eval-data", help="JSONL for the eval loss instead of a held-out split; repeatable."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Eval loss every N steps \\[default: at each checkpoint and the end]."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help=with_default("Checkpoint every N steps.", TrainConfig, "save_every")),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="System turn for chat examples without one \\[default: none]."),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help="Chat template for a base model without one, or replacing the tokenizer's: gemma | chatml | a Jinja FILE; saved with the student, so its exported GGUF chats in it.", metavar="NAME|FILE"),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto | fp32 | bf16 \\[default: auto: bf16 where the GPU or CPU (AVX512-BF16, AMX) has it, else fp32]."),
    device: Optional[str] = typer.Option(None, "--device", help=with_default("auto | cpu | cuda | cuda:N.", TrainConfig, "device")),
    gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing", help=with_default("Recompute each layer's activations in the backward pass instead of keeping them: far less memory, some more compute.", TrainConfig, "gradient_checkpointing"), metavar=""),
    checkpoint_policy: Optional[str] = typer.Option(None, "--checkpoint-policy", help=with_default("What checkpointing recomputes: full (all but each layer's input) | selective (keeps attention and the matrix products no wider than the hidden size; recomputes the wide MLP projections and the element-wise work) | auto (selective, but full for LoRA in fp32, where it would pass 3 GB).", TrainConfig, "checkpoint_policy")),
    seed: Optional[int] = typer.Option(None, "--seed", help=with_default("Seed of the adapter init, split, data order and dropout.", TrainConfig, "seed")),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in -o/--out-dir from its last checkpoint.", metavar=""),
    force: bool = typer.Option(False, "--force", help="Delete the run files in -o/--out-dir and start over.", metavar=""),
    config_path: Optional[Path] = config_option("TrainConfig"),
):
    """Fine-tune a small model on reasoning traces (SFT): LoRA, QLoRA or full, loss on assistant tokens only.

    The thinking stays in the assistant turn between <think> tags; prompt tokens carry no loss. Rows are packed,
    a held-out split gives the eval loss, checkpoints are written every --save-every steps and on Ctrl-C, and
    running the same command again continues from the last one. RUN/config.yaml holds the settings:
    dca distill train -c RUN/config.yaml repeats the run. Export the result with: dca quant export RUN
    """
    from ..config import load_config
    from ..distill.train import TrainConfig, train

    given = {"model": model, "method": method, "qlora": qlora, "lora_r": lora_r, "lora_alpha": lora_alpha,
             "lora_dropout": lora_dropout, "target_modules": target_modules, "seq_len": seq_len, "packing": packing,
             "batch_size": batch_size, "grad_accum": grad_accum, "epochs": epochs, "max_steps": max_steps, "lr": lr,
             "schedule": schedule, "warmup_ratio": warmup_ratio, "weight_decay": weight_decay,
             "max_grad_norm": max_grad_norm, "eval_fraction": eval_fraction, "eval_data": eval_data or None,
             "eval_every": eval_every, "save_every": save_every, "system_prompt": system_prompt,
             "chat_template": chat_template, "precision": precision, "device": device,
             "gradient_checkpointing": gradient_checkpointing, "checkpoint_policy": checkpoint_policy, "seed": seed,
             "resume": resume or None,
             "force": force or None}
    cfg = load_config(TrainConfig, config_path, data=data or None, out_dir=out_dir, **given)
    try:
        with ProgressView(err) as view:
            result = train(cfg, progress=view)
    except KeyboardInterrupt:
        raise _train_interrupted(cfg.out_dir) from None
    for b in result.bad:
        print_warning("skipped", str(b))
    if result.already_complete:
        out.print(f"{result.run_dir} is complete ({result.steps}/{result.total_steps} steps); --force starts it over")
    else:
        s = result.stats
        resumed = f", resumed from step {result.resumed_from}" if result.resumed_from is not None else ""
        out.print(f"{s['train_examples']} train / {s['eval_examples']} eval examples in {s['train_rows']} rows "
                  f"({s['fill']:.0%} filled, {s['truncated']} truncated); {result.trainable_params:,} of "
                  f"{result.total_params:,} parameters trained{resumed}")
    ev = f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""
    loss = (f"loss {result.first_loss:.4f} -> {result.loss:.4f}{ev}; "
            if result.first_loss is not None and result.loss is not None else "")
    rate = f"{result.tokens_per_s:,.0f} tok/s; " if result.tokens_per_s else ""
    out.print(f"{result.steps}/{result.total_steps} steps, {loss}{rate}{result.train_seconds:.1f}s training")
    out.print(f"wrote {result.output}; export it with: dca quant export {result.run_dir}")

# -- run -----------------------------------------------------------------------------------------------------


@app.command("run")
@handles_errors
def distill_run(
    config_path: Path = typer.Argument(..., help="YAML file: out_dir and one section per stage (import_traces or generate, filter, train, export, quantize, eval)."),
    out_dir: Optional[Path] = typer.Option(None, "-o", "--out-dir", help="Directory of every stage's output (overrides out_dir in the file)."),
    force: bool = typer.Option(False, "--force", help="Run every stage again, even when up to date.", metavar=""),
):
    """Run the whole distillation chain from one YAML file: import or generate -> filter -> train -> export -> quantize -> eval.

    A stage whose inputs and settings are unchanged since it last finished is skipped (STAGE.stamp.json beside
    its output records the hash); an interrupted stage continues where it stopped when the command is run again.
    """
    from ..config import load_config
    from ..pipeline import PipelineConfig, run_pipeline

    cfg = load_config(PipelineConfig, config_path, out_dir=out_dir, force=force or None)
    with ProgressView(err, transient=True) as view:
        try:
            report = run_pipeline(cfg, progress=view)
        except KeyboardInterrupt:
            raise interrupted(f"finished stages are kept in {cfg.out_dir} (STAGE.stamp.json); run the same command "
                              "to continue with the stage that was running") from None
    t = table("stage", "action", "seconds", "result")
    for s in report.stages:
        t.add_row(s.stage, s.action, f"{s.seconds:.1f}", s.summary)
    print_table(t)
    out.print(f"outputs in {report.out_dir}")
