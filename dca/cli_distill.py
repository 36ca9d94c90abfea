"""``dca distill ...``: the reasoning-distillation commands (a thin layer over :mod:`dca.distill`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli import _handles_errors, err, out  # noqa: F401  (shared console and error handling)

distill_app = typer.Typer(
    help="Reasoning: generate or import chain-of-thought traces, verify and filter them, distill them (SFT).",
    no_args_is_help=True,
)

# -- generate ------------------------------------------------------------------------------------------------


@distill_app.command("generate")
@_handles_errors
def distill_generate(
    questions: Path = typer.Argument(..., help="JSONL questions: GSM8K (question, answer '#### N'), MATH (problem, answer or solution with \\boxed{}) or messages (first user turn; gold or answer optional); optional id."),
    out_path: Path = typer.Option(..., "-o", "--out", help="Trace JSONL to append to; re-running the same command resumes it."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="openai | gguf | hf \\[default: openai]."),
    teacher_model: Optional[str] = typer.Option(None, "--teacher-model", help="Model name (openai), GGUF name or path (gguf) or model directory (hf)."),
    model: Optional[str] = typer.Option(None, "-m", "--model", help="Same as --teacher-model \\[default for gguf: bundled smollm2-135m-instruct]."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible API root, e.g. http://127.0.0.1:8080/v1."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="Environment variable holding the API key; may be unset for local servers \\[default: OPENAI_API_KEY]."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Samples per question \\[default: 1]."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="0 is greedy \\[default: 0.7]."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Most generated tokens per sample, thinking included \\[default: 2048]."),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="System turn; '' sends none \\[default: reason step by step, answer in \\boxed{}]."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Requests in flight (openai); local teachers run one at a time \\[default: 8]."),
    timeout_s: Optional[float] = typer.Option(None, "--timeout", help="Seconds per HTTP request \\[default: 300]."),
    max_retries: Optional[int] = typer.Option(None, "--max-retries", help="Retries on 429, 5xx and connection errors \\[default: 5]."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use the first N valid questions \\[default: all]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Base seed; each sample's seed is derived from it, the id and the sample index \\[default: 0]."),
    config_path: Optional[Path] = typer.Option(None, "-c", "--config", help="YAML file of GenerateConfig settings (flags override it)."),
):
    """Sample reasoning traces from a teacher model into a trace JSONL, N per question, resumably.

    Each (question id, sample) is appended once as a whole line; an interrupted run (Ctrl-C, kill, crash)
    continues where it stopped when the same command is run again. meta.correct records whether the final
    answer matches the gold answer; filter on it with: dca distill filter
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .config import load_config
    from .distill.generate import GenerateConfig, generate, load_teacher

    if model is not None and teacher_model is not None and model != teacher_model:
        err.print("[bold red]error:[/] give the model once: -m/--model or --teacher-model")
        raise typer.Exit(2)
    given = {"teacher": teacher, "teacher_model": teacher_model or model, "base_url": base_url, "api_key_env": api_key_env,
             "samples": samples, "temperature": temperature, "max_tokens": max_tokens, "system_prompt": system_prompt,
             "concurrency": concurrency, "timeout_s": timeout_s, "max_retries": max_retries, "limit": limit, "seed": seed}
    cfg = load_config(GenerateConfig, config_path, questions=questions, out=out_path, **given)
    bar = Progress(TextColumn("generate"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                   TextColumn("accepted {task.fields[acc]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=err)
    bar_task = bar.add_task("generate", total=None, rate="", acc="-")

    def progress(p):
        bar.start()  # on the first call, once the teacher is loaded and the files are read
        rate = (f"{p.completion_tokens / p.elapsed_s:.1f} tok/s" if p.completion_tokens and p.elapsed_s
                else f"{p.written / p.elapsed_s:.2f} samples/s" if p.elapsed_s else "")
        acc = "-" if p.acceptance is None else f"{p.accepted}/{p.judged} ({p.acceptance:.0%})"
        bar.update(bar_task, completed=p.done, total=p.total, rate=rate, acc=acc)

    teacher_obj = load_teacher(cfg)
    try:
        report = generate(cfg, teacher_obj, progress=progress)
    except KeyboardInterrupt:
        bar.stop()
        err.print(f"[yellow]interrupted[/]: finished samples are kept in {cfg.out}; run the same command to continue")
        raise typer.Exit(130) from None
    finally:
        bar.stop()
        teacher_obj.close()
    for b in report.bad_lines:
        err.print(f"[yellow]skipped[/] {b}")
    acc = "no gold answers" if report.acceptance is None else f"{report.accepted}/{report.judged} accepted ({report.acceptance:.1%})"
    out.print(f"{report.written} traces written to {cfg.out}, {report.skipped} already there, {report.failed} failed; "
              f"{acc}; {report.completion_tokens} tokens in {report.wall_s:.1f}s")
    if report.failed:
        for e in report.errors[:3]:
            err.print(f"[red]failed[/] {e}")
        err.print(f"[bold red]error:[/] {report.failed} samples failed; run the same command again to retry them")
        raise typer.Exit(1)

# -- import --------------------------------------------------------------------------------------------------


@distill_app.command("import")
@_handles_errors
def distill_import(
    src: Path = typer.Argument(..., help="JSONL to convert: GSM8K or MATH solutions, R1-style think/final traces, ShareGPT conversations or messages."),
    out_path: Path = typer.Option(..., "-o", "--out", help="Trace JSONL to write (atomically)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="auto | gsm8k | math | think-final | sharegpt | messages \\[default: auto, by keys, line by line]."),
    force: bool = typer.Option(False, "--force", help="Overwrite -o/--out if it exists."),
):
    """Convert existing solutions or reasoning traces into a dca trace file for: dca distill filter

    GSM8K solutions become worked answers ending in \\boxed{N} (calculator notes removed, gold N); think/final
    traces keep their thinking, and an unclosed think block marks a trace truncated. Lines that cannot be
    converted are reported with their line numbers and skipped.
    """
    from .distill.importers import import_traces

    report = import_traces(src, out_path, force=force, **({"fmt": fmt} if fmt is not None else {}))
    for b in report.bad:
        err.print(f"[yellow]skipped[/] {b}")
    shapes = ", ".join(f"{n} {shape}" for shape, n in report.formats.items())
    out.print(f"wrote {report.written} traces ({shapes}) to {report.out}: {report.closed} closed, "
              f"{report.with_gold} with a gold answer; {len(report.bad)} of {report.lines} lines skipped")

# -- filter --------------------------------------------------------------------------------------------------


@distill_app.command("filter")
@_handles_errors
def distill_filter(
    traces: list[Path] = typer.Argument(..., help="dca trace files (from dca distill generate or import)."),
    out_path: Path = typer.Option(..., "-o", "--out", help="messages JSONL of the kept traces, thinking inside the assistant turn."),
    decontaminate: Optional[list[Path]] = typer.Option(None, "--decontaminate", help="JSONL of held-out questions (question/problem fields, e.g. a test set); repeatable."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Drop traces whose thinking + answer is longer \\[default: no limit]."),
    max_per_question: Optional[int] = typer.Option(None, "--max-per-question", help="Keep at most K traces per question id \\[default: all]."),
    prefer_shorter: Optional[bool] = typer.Option(None, "--prefer-shorter/--input-order", help="Which traces win duplicates and the per-question cap \\[default: input order]."),
    near_dup_threshold: Optional[float] = typer.Option(None, "--near-dup-threshold", help="MinHash Jaccard over word 5-grams at or above which a trace is a near duplicate \\[default: 0.9]."),
    max_repetition: Optional[float] = typer.Option(None, "--max-repetition", help="Highest fraction of repeated word 4-grams kept \\[default: 0.5]."),
    report_dir: Optional[Path] = typer.Option(None, "--report-dir", help="Report directory \\[default: OUT with the suffix .report]."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Hugging Face tokenizer (name or directory) to count tokens \\[default: an approximation]."),
    force: bool = typer.Option(False, "--force", help="Overwrite -o/--out and the report files."),
    config_path: Optional[Path] = typer.Option(None, "-c", "--config", help="YAML file of FilterConfig settings (flags override it)."),
):
    """Keep the traces worth training on: correct, complete, not too long, not repetitive, not duplicated, not contaminated.

    Each trace gets one verdict, the first failing check of: contaminated (8-gram overlap with --decontaminate),
    no_gold, truncated, no_answer, wrong_answer, too_long, repetitive, duplicate, near_duplicate,
    per_question_cap. Writes OUT and, in the report directory, verdicts.jsonl, report.json, lengths.png and
    config.json.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .config import load_config
    from .distill.filter import REASONS, FilterConfig, filter_traces

    given = {"decontaminate": decontaminate or None, "max_tokens": max_tokens, "max_per_question": max_per_question,
             "prefer_shorter": prefer_shorter, "near_dup_threshold": near_dup_threshold, "max_repetition": max_repetition,
             "report_dir": report_dir, "tokenizer": tokenizer, "force": force or None}
    cfg = load_config(FilterConfig, config_path, traces=traces, out=out_path, **given)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err)
    bar_task = bar.add_task("checking", total=None)

    def progress(stage: str, done: int, total: int):
        bar.start()
        bar.update(bar_task, description=stage, completed=done, total=total)

    try:
        report = filter_traces(cfg, progress=progress)
    finally:
        bar.stop()
    for b in report.bad:
        err.print(f"[yellow]skipped[/] {b}")
    table = Table("verdict", "traces")
    table.add_row("[green]kept[/]", str(report.kept))
    for reason in REASONS:
        if report.dropped[reason]:
            table.add_row(reason, str(report.dropped[reason]))
    out.print(table)
    kept = report.tokens["kept"]
    lengths = f"; kept traces: median {kept['median']:.0f}, max {kept['max']} tokens" if kept["n"] else ""
    out.print(f"kept {report.kept} of {report.total} traces in {report.wall_s:.1f}s{lengths} ({report.token_counter})")
    out.print(f"wrote {cfg.out} and {cfg.report_dir}: verdicts.jsonl report.json lengths.png config.json")
