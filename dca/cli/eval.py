"""``dca eval``: accuracy of the assistant on a task, and ``dca eval compare`` (a thin layer over :mod:`dca.eval`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from .common import err, handles_errors, interrupted, out, print_error, print_json, print_table, print_warning, table
from .options import assistant_options, chat_template_option, json_option, model_option
from .progress import ProgressView

app = typer.Typer(no_args_is_help=True)  # its help is eval_run's docstring


@app.callback(invoke_without_command=True)
@handles_errors
@assistant_options
def eval_run(
    ctx: typer.Context,
    task: Optional[str] = typer.Option(None, "--task", help="gsm8k | math | qa."),
    data: Optional[Path] = typer.Option(None, "--data", help="JSONL items: GSM8K (question, answer ending '#### N'), MATH-500 (problem, solution, answer) or SQuAD (question, answers/answers_all, gold_paragraph_id)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate the first N valid items \\[default: all]."),
    model: Optional[str] = model_option(),
    store_dir: Optional[Path] = typer.Option(None, "--store-dir", "-s", help="RAG store to answer from; for qa also recall@k of the gold paragraph \\[default: none, closed-book]."),
    out_dir: Optional[Path] = typer.Option(None, "-o", "--out-dir", help="Run directory \\[default: ./eval-TASK-YYYYmmdd-HHMMSS]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in -o/--out-dir (same settings only).", metavar=""),
    force: bool = typer.Option(False, "--force", help="Delete the run files in a non-empty -o/--out-dir and start over.", metavar=""),
    chat_template: Optional[str] = chat_template_option(),
    settings: dict = None,
):
    """Evaluate the assistant on GSM8K, MATH-500 or SQuAD-shaped JSONL; compare two runs.

    Writes report.json, report.md, predictions.jsonl and config.json to the run directory. gsm8k and math ask for
    step-by-step reasoning and a final \\boxed{} answer, scored by equivalence with the gold answer; qa asks for a
    short phrase, scored by SQuAD exact match and F1. Accuracies come with 95% Wilson intervals. Every assistant
    setting of dca chat applies (--samples k > 1 adds maj@k and pass@k). An interrupted run continues with
    --resume -o DIR. Compare two runs with: dca eval compare A B
    """
    if ctx.invoked_subcommand is not None:
        return
    if task is None or data is None:
        print_error("--task and --data are required (see: dca eval --help)")
        raise typer.Exit(2)
    from ..eval import EvalConfig, run_eval

    cfg = EvalConfig(task=task, data=data, limit=limit, model=model, store_dir=store_dir, out_dir=out_dir,
                     resume=resume, force=force, assistant=settings, chat_template=chat_template)
    err.print(Text(f"run directory: {cfg.out_dir}", style="dim"))
    try:
        with ProgressView(err) as view:
            report = run_eval(cfg, progress=view)
    except KeyboardInterrupt:
        raise interrupted(f"finished items are kept in {cfg.out_dir}; continue with the same flags and --resume -o "
                          f"{cfg.out_dir}") from None
    for s in report.skipped:
        print_warning("skipped", f"{cfg.data} line {s.line}: {s.reason}")
    t = table("metric", "value", "95% interval", "n")
    for m in report.metrics.values():
        t.add_row(m.name, f"{m.value:.1%}", f"[{m.low:.1%}, {m.high:.1%}]", str(m.n))
    print_table(t)
    out.print(f"{report.items} items, k = {report.samples}: {report.mean_thinking_tokens:.1f} thinking + "
              f"{report.mean_answer_tokens:.1f} answer tokens per item ({report.mean_generated_tokens:.1f} generated), "
              f"{report.tokens_per_s:.1f} tok/s, {report.wall_s:.1f}s")
    out.print(f"wrote {cfg.out_dir}: report.json report.md predictions.jsonl config.json")


@app.command("rescore")
@handles_errors
def eval_rescore(run: Path = typer.Argument(..., help="Directory of a dca eval run made with --samples k > 1."),
                 verifier: str = typer.Option(..., "--verifier", help="GGUF of a verifier (dca distill verifier) to judge the run's candidates: an outcome verifier, or a process verifier with --process-verifier."),
                 out_dir: Path = typer.Option(..., "-o", "--out-dir", help="New run directory for the rescored run."),
                 strategy: str = typer.Option("weighted_vote", "--strategy", help="weighted_vote | best_of_n: the choice reported as accuracy (both are reported as NAME@k)."),
                 process: bool = typer.Option(False, "--process-verifier", help="The verifier is a process verifier (PRM, dca distill verifier --process): each candidate is scored by its last step, P(Yes) to 'Are the steps so far correct?' after the whole solution.", metavar=""),
                 resume: bool = typer.Option(False, "--resume", help="Continue an interrupted rescoring in -o/--out-dir.", metavar=""),
                 force: bool = typer.Option(False, "--force", help="Delete the run files in a non-empty -o/--out-dir and start over.", metavar="")):
    """Judge the k candidates of a sampled run with a verifier, without sampling again.

    Writes a run directory like dca eval's: accuracy is the strategy's choice, beside best_of_n@k,
    weighted_vote@k and the sampled run's maj@k and pass@k. Compare it with a greedy run:
    dca eval compare GREEDY RESCORED --pair accuracy:weighted_vote@8
    """
    from ..eval import rescore_run

    err.print(Text(f"run directory: {out_dir}", style="dim"))
    try:
        with ProgressView(err) as view:
            report = rescore_run(run, verifier, out_dir, strategy=strategy, process=process, resume=resume, force=force, progress=view)
    except KeyboardInterrupt:
        raise interrupted(f"rescored items are kept in {out_dir}; continue with the same flags and --resume") from None
    t = table("metric", "value", "95% interval", "n")
    for m in report.metrics.values():
        t.add_row(m.name, f"{m.value:.1%}", f"[{m.low:.1%}, {m.high:.1%}]", str(m.n))
    print_table(t)
    out.print(f"wrote {out_dir}: report.json report.md predictions.jsonl config.json")


@app.command("compare")
@handles_errors
def eval_compare(a: Path = typer.Argument(..., help="report.json of run A (or its directory)."),
                 b: Path = typer.Argument(..., help="report.json of run B (or its directory)."),
                 pair: Optional[list[str]] = typer.Option(None, "--pair", metavar="A_METRIC:B_METRIC", help="Also compare A's metric with another of B's, e.g. accuracy:weighted_vote@8 (greedy against a verifier's choice); repeatable."),
                 as_json: bool = json_option()):
    """Print each metric of runs A and B, the difference B - A with a 95% interval, and whether it is significant.

    The interval is a paired bootstrap over items (2,000 resamples, fixed seed) when both predictions.jsonl files
    are beside the reports; otherwise an unpaired Newcombe (Wilson) interval. A run still going (or interrupted)
    is compared by the items it has finished, A and B both over the items they share.
    """
    from ..eval import compare_reports

    pairs = []
    for p in pair or []:
        name_a, sep, name_b = p.partition(":")
        if not sep or not name_a.strip() or not name_b.strip():
            print_error(f"--pair {p!r}: expected A_METRIC:B_METRIC, e.g. accuracy:maj@8")
            raise typer.Exit(2)
        pairs.append((name_a.strip(), name_b.strip()))
    c = compare_reports(a, b, pairs=pairs)
    if as_json:
        print_json({"a": str(a), "b": str(b), "paired_items": c.paired_items, "rows": c.rows, "notes": list(c.notes)})
        return
    from ..eval.compare import COMPUTE_FIELDS

    t = table("metric", "A", "B", "B - A", "95% interval", "significant", "method")

    def fmt(v, pct: bool, sign: str = "") -> str:
        return "-" if v is None else (f"{v:{sign}.1%}" if pct else f"{v:{sign}.1f}")

    for r in c.rows:
        pct = r.name not in COMPUTE_FIELDS
        interval = "" if r.low is None else f"[{fmt(r.low, pct, '+')}, {fmt(r.high, pct, '+')}]"
        significant = "" if r.significant is None else ("yes" if r.significant else "no")
        t.add_row(r.name, fmt(r.a, pct), fmt(r.b, pct), fmt(r.diff, pct, "+"), interval, significant, r.method or "")
    out.print(f"A: {a}\nB: {b}")
    print_table(t)
    for note in c.notes:
        out.print(Text(f"note: {note}", style="dim"))
