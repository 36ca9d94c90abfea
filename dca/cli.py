"""The ``dca`` command line: a thin Typer layer over the library (it owns printing and exit codes)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .cli_common import err, handles_errors, out

app = typer.Typer(help="dca: small local language models composed with a RAG store and a thinking phase, offline.",
                  no_args_is_help=True, add_completion=False)
rag_app = typer.Typer(help="Knowledge: ingest documents into a local RAG store and search it.", no_args_is_help=True)
models_app = typer.Typer(help="List the bundled and registered models, or register a GGUF.")
app.add_typer(rag_app, name="rag")
app.add_typer(models_app, name="models")

STORE_DIR_HELP = "Store directory (default: $DCA_HOME/store)."
_handles_errors = handles_errors


def _store_dir(store_dir: Optional[Path]) -> Path:
    from .home import dca_home

    return store_dir if store_dir is not None else dca_home() / "store"


def _embedder(path: Optional[Path]):
    from .rag import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(path)


# -- models ----------------------------------------------------------------------------------------


@models_app.callback(invoke_without_command=True)
@_handles_errors
def models(ctx: typer.Context):
    """List the bundled models and the GGUF files registered or used by path."""
    if ctx.invoked_subcommand is not None:
        return
    from .models import list_models

    table = Table("name", "kind", "origin", "size", "path")
    for m in list_models():
        table.add_row(m.name, m.kind, m.origin, f"{m.size_bytes / 1e6:.1f} MB", m.path)
    out.print(table)


@models_app.command("add")
@_handles_errors
def models_add(name: str = typer.Argument(..., help="Name to use with -m/--model."),
               path: Path = typer.Argument(..., help="A GGUF file.")):
    """Register a GGUF file under a name."""
    from .models import register_model

    entry = register_model(name, path)
    out.print(f"registered {entry.name} -> {entry.path}")


# -- rag ---------------------------------------------------------------------------------------------


@rag_app.command("ingest")
@_handles_errors
def rag_ingest(
    paths: List[Path] = typer.Argument(..., help="Files or directories (.txt .md .html .pdf .jsonl)."),
    store_dir: Optional[Path] = typer.Option(None, "--store-dir", "-s", help=STORE_DIR_HELP),
    chunk_tokens: Optional[int] = typer.Option(None, "--chunk-tokens", help="Chunk budget in tokens (new stores) \\[default: 220]."),
    overlap_tokens: Optional[int] = typer.Option(None, "--overlap-tokens", help="Tokens shared by consecutive chunks (new stores) \\[default: 32]."),
    embedder_path: Optional[Path] = typer.Option(None, "--embedder", help="A sentence-transformers directory (default: bundled all-MiniLM-L6-v2)."),
    config_path: Optional[Path] = typer.Option(None, "-c", "--config", help="YAML file of StoreConfig settings (flags override it)."),
):
    """Load, chunk, embed and index documents; unchanged files are skipped, changed ones replaced."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .config import load_config
    from .rag import Store, StoreConfig

    config = load_config(StoreConfig, config_path, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)
    store = Store.create(_store_dir(store_dir), _embedder(embedder_path), config)
    with Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TextColumn("chunks"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("embed", total=None)
        report = store.ingest(paths, progress=lambda p: bar.update(task, completed=p.chunks_done, total=p.chunks_total))
    for w in report.warnings:
        err.print(f"[yellow]warning:[/] {w}")
    for path, reason in report.errors.items():
        err.print(f"[red]skipped[/] {path}: {reason}")
    info = store.info()
    out.print(f"{len(report.added)} added, {len(report.updated)} updated, {len(report.unchanged)} unchanged, "
              f"{len(report.errors)} failed; {report.chunks_added} chunks embedded, {report.chunks_reused} reused "
              f"in {report.seconds:.1f}s. Store {info.path}: {info.files} files, {info.chunks} chunks.")
    if report.errors:
        raise typer.Exit(1)


@rag_app.command("search")
@_handles_errors
def rag_search(
    query: str = typer.Argument(..., help="The search query."),
    store_dir: Optional[Path] = typer.Option(None, "--store-dir", "-s", help=STORE_DIR_HELP),
    k: int = typer.Option(5, "-k", "--top-k", help="Number of chunks to show."),
    mode: str = typer.Option("hybrid", "--mode", help="dense | lexical | hybrid (reciprocal rank fusion)."),
    embedder_path: Optional[Path] = typer.Option(None, "--embedder", help="The store's embedder directory, if not bundled."),
):
    """Print the chunks ranked for QUERY, with score and source."""
    from .rag import Store

    store = Store.open(_store_dir(store_dir), _embedder(embedder_path))
    hits = store.search(query, k=k, mode=mode)
    if not hits:
        out.print("no results")
    for rank, h in enumerate(hits, 1):
        out.print(f"[bold]{rank}.[/] score {h.score:.4f}  cosine {h.similarity:.3f}  [cyan]{h.title}[/]  ({h.source})")
        text = " ".join(h.text.split())
        out.print(f"   {text[:300]}{'...' if len(text) > 300 else ''}")


@rag_app.command("info")
@_handles_errors
def rag_info(store_dir: Optional[Path] = typer.Option(None, "--store-dir", "-s", help=STORE_DIR_HELP),
             embedder_path: Optional[Path] = typer.Option(None, "--embedder", help="The store's embedder directory, if not bundled.")):
    """Show the store's counts, size, embedder and index type."""
    from .rag import Store

    i = Store.open(_store_dir(store_dir), _embedder(embedder_path)).info()
    table = Table(show_header=False)
    for key, value in [("path", i.path), ("format version", i.version), ("embedder", f"{i.embedder} ({i.dim}-d)"),
                       ("index", i.index_type), ("files", i.files), ("documents", i.documents), ("chunks", i.chunks),
                       ("size", f"{i.bytes_on_disk / 1e6:.2f} MB"),
                       ("chunking", f"{i.chunking['chunk_tokens']} tokens, overlap {i.chunking['overlap_tokens']}")]:
        table.add_row(key, str(value))
    out.print(table)


@rag_app.command("remove")
@_handles_errors
def rag_remove(paths: List[Path] = typer.Argument(..., help="Files or directories to drop from the store."),
               store_dir: Optional[Path] = typer.Option(None, "--store-dir", "-s", help=STORE_DIR_HELP),
               embedder_path: Optional[Path] = typer.Option(None, "--embedder", help="The store's embedder directory, if not bundled.")):
    """Drop the chunks of files (or of every file under a directory) from the store."""
    from .rag import Store

    removed = Store.open(_store_dir(store_dir), _embedder(embedder_path)).remove(paths)
    if not removed:
        err.print(f"[red]error:[/] none of {', '.join(map(str, paths))} is in the store (see: dca rag info)")
        raise typer.Exit(1)
    out.print(f"removed {len(removed)} file(s): " + ", ".join(removed))


# -- chat ---------------------------------------------------------------------------------------------


def _print_answer_stream(bot, question: str, show_thinking: bool):
    answer = None
    in_thinking = False
    for chunk in bot.stream(question):
        if chunk.kind == "thinking" and show_thinking:
            if not in_thinking:
                out.print("[dim]thinking:[/] ", end="")
                in_thinking = True
            out.print(chunk.text, end="", style="dim", markup=False)
        elif chunk.kind == "answer":
            if in_thinking:
                out.print()
                in_thinking = False
            out.print(chunk.text, end="", markup=False)
        elif chunk.kind == "done":
            answer = chunk.answer
    out.print()
    if answer is not None:
        added = {s.number for s in answer.sources if s.cited_by == "attribution"}
        if added:
            out.print(f"[dim](citations added by attribution: {', '.join(f'[{n}]' for n in sorted(added))})[/]", markup=True)
        _print_sources(answer, cited_only=True)
        if answer.votes:
            tally = ", ".join(f"{v.answer} x{v.count}" for v in answer.votes)
            out.print(f"[dim]votes over {answer.stats.samples} samples: {tally}[/]", markup=True)
        st = answer.stats
        out.print(f"[dim]{st.answer_tokens} answer + {st.thinking_tokens} thinking tokens, {st.tokens_per_s:.1f} tok/s, "
                  f"first token {st.first_token_s:.2f}s, total {st.total_s:.2f}s[/]")
    return answer


def _print_sources(answer, cited_only: bool):
    sources = answer.citations if cited_only else answer.sources
    for s in sources:
        mark = "*" if s.cited else " "
        out.print(f"[cyan]\\[{s.number}]{mark}[/] {s.title}  [dim]({s.source}, cosine {s.similarity:.2f})[/]")


@app.command()
@_handles_errors
def chat(
    question: Optional[str] = typer.Argument(None, help="Ask one question and exit; without it, start a chat session."),
    model: Optional[str] = typer.Option(None, "-m", "--model", help="Model name (see: dca models) or GGUF path \\[default: bundled smollm2-135m-instruct]."),
    store_dir: Optional[Path] = typer.Option(None, "--store-dir", "-s", help="RAG store to answer from (none: no retrieval)."),
    think: Optional[bool] = typer.Option(None, "--think/--no-think", help="Think before answering \\[default: only models with their own think tags]."),
    thinking_budget: Optional[int] = typer.Option(None, "--thinking-budget", help="Most thinking tokens \\[default: 256]."),
    show_thinking: bool = typer.Option(False, "--show-thinking", help="Print the thinking (hidden by default)."),
    k: Optional[int] = typer.Option(None, "-k", "--top-k", help="Passages retrieved per question \\[default: 4]."),
    mode: Optional[str] = typer.Option(None, "--mode", help="Retrieval: hybrid | dense | lexical \\[default: hybrid]."),
    min_similarity: Optional[float] = typer.Option(None, "--min-similarity", help="Drop passages below this cosine \\[default: 0.2]."),
    context_sentences: Optional[int] = typer.Option(None, "--context-sentences", help="Quote only the N retrieved sentences that rank best for the question (cosine, BM25 and passage rank fused); 0 quotes passages whole \\[default: 0]."),
    quote: Optional[bool] = typer.Option(None, "--quote/--no-quote", help="Answer with the span of the retrieved passages (up to 4 words) that the model scores most probable, cited \\[default: off]."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Most answer tokens \\[default: 256]."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="0 is greedy \\[default: 0]."),
    sample_temperature: Optional[float] = typer.Option(None, "--sample-temperature", help="Temperature of the k samples of --samples/--effort \\[default: 0.7]."),
    repeat_penalty: Optional[float] = typer.Option(None, "--repeat-penalty", help="Penalise repeated tokens, 1 is off \\[default: 1.1]."),
    effort: Optional[str] = typer.Option(None, "--effort", help="Test-time compute: low | medium | high (samples to vote over, thinking budget)."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Sample k answers and return the majority (self-consistency) \\[default: 1]."),
    vote: Optional[str] = typer.Option(None, "--vote", help="majority | logprob (weighted by mean token log-probability) \\[default: majority]."),
    min_thinking_tokens: Optional[int] = typer.Option(None, "--min-thinking-tokens", help="Budget forcing: append 'Wait' when thinking ends earlier \\[default: 0]."),
    config_path: Optional[Path] = typer.Option(None, "-c", "--config", help="YAML file of AssistantConfig settings (flags override it)."),
):
    """Chat with a local model, answering from a RAG store with citations [1], [2].

    In a session: /sources shows the passages of the last answer, /reset forgets the conversation, /exit quits.
    """
    from .assistant import Assistant, AssistantConfig
    from .config import load_config

    config = load_config(AssistantConfig, config_path, think=think, thinking_budget=thinking_budget, top_k=k,
                         search_mode=mode, min_similarity=min_similarity, context_sentences=context_sentences,
                         quote=quote, max_tokens=max_tokens, temperature=temperature,
                         sample_temperature=sample_temperature, repeat_penalty=repeat_penalty, effort=effort,
                         samples=samples, vote=vote, min_thinking_tokens=min_thinking_tokens)
    bot = Assistant(model=model, store=store_dir, config=config)
    if question is not None:
        _print_answer_stream(bot, question, show_thinking)
        return
    out.print(f"[bold]dca chat[/] with {bot.llm.name}{' and ' + str(store_dir) if store_dir else ''}. "
              "Commands: /sources /reset /exit")
    last = None
    while True:
        try:
            line = out.input("[bold green]> [/]").strip()
        except (EOFError, KeyboardInterrupt):
            out.print()
            return
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            bot.reset()
            out.print("[dim]conversation reset[/]")
        elif line == "/sources":
            if last is None or not last.sources:
                out.print("[dim]no sources for the last answer[/]")
            else:
                _print_sources(last, cited_only=False)
        elif line.startswith("/"):
            out.print(f"[yellow]unknown command {line}[/]; commands: /sources /reset /exit")
        else:
            try:
                last = _print_answer_stream(bot, line, show_thinking)
            except KeyboardInterrupt:
                out.print("\n[dim](stopped)[/]")


@app.command()
@_handles_errors
def demo(model: Optional[str] = typer.Option(None, "-m", "--model", help="Model name or GGUF path \\[default: bundled]."),
         question: Optional[List[str]] = typer.Option(None, "-q", "--question", help="Ask these instead of the demo questions.")):
    """The main job on bundled defaults: ingest the Python language reference, then answer questions with citations."""
    from .demo import DEMO_QUESTIONS, demo_paths, write_python_reference_corpus

    corpus, store_dir = demo_paths()
    write_python_reference_corpus(corpus)
    out.print(f"[bold]1. Knowledge[/]: ingesting the Python language reference ({corpus}) into {store_dir}")
    rag_ingest([corpus], store_dir=store_dir, chunk_tokens=None, overlap_tokens=None, embedder_path=None, config_path=None)
    from .assistant import Assistant

    bot = Assistant(model=model, store=store_dir)
    out.print(f"[bold]2. Language[/]: {bot.llm.name} ({'thinking' if bot._thinking() else 'no thinking phase'})")
    for q in question or DEMO_QUESTIONS:
        bot.reset()
        out.print(f"\n[bold green]Q:[/] {q}\n[bold]A:[/] ", end="")
        _print_answer_stream(bot, q, show_thinking=False)


# -- eval ---------------------------------------------------------------------------------------------

eval_app = typer.Typer(no_args_is_help=True)  # its help is eval_run's docstring
app.add_typer(eval_app, name="eval")


@eval_app.callback(invoke_without_command=True)
@_handles_errors
def eval_run(
    ctx: typer.Context,
    task: Optional[str] = typer.Option(None, "--task", help="gsm8k | math | qa."),
    data: Optional[Path] = typer.Option(None, "--data", help="JSONL items: GSM8K (question, answer ending '#### N'), MATH-500 (problem, solution, answer) or SQuAD (question, answers/answers_all, gold_paragraph_id)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate the first N valid items \\[default: all]."),
    model: Optional[str] = typer.Option(None, "-m", "--model", help="Model name or GGUF path \\[default: bundled smollm2-135m-instruct]."),
    store_dir: Optional[Path] = typer.Option(None, "--store-dir", "-s", help="RAG store to answer from; for qa also recall@k of the gold paragraph \\[default: none, closed-book]."),
    effort: Optional[str] = typer.Option(None, "--effort", help="Test-time compute: low | medium | high."),
    samples: Optional[int] = typer.Option(None, "--samples", help="k answers per item; k > 1 adds maj@k and pass@k \\[default: 1]."),
    out_dir: Optional[Path] = typer.Option(None, "-o", "--out-dir", help="Run directory \\[default: ./eval-TASK-YYYYmmdd-HHMMSS]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in -o/--out-dir (same settings only)."),
    force: bool = typer.Option(False, "--force", help="Delete the run files in a non-empty -o/--out-dir and start over."),
    think: Optional[bool] = typer.Option(None, "--think/--no-think", help="Think before answering \\[default: only models with think tags]."),
    thinking_budget: Optional[int] = typer.Option(None, "--thinking-budget", help="Most thinking tokens \\[default: 256]."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Most answer tokens \\[default: 256]."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="0 is greedy \\[default: the assistant's]."),
    sample_temperature: Optional[float] = typer.Option(None, "--sample-temperature", help="Temperature of the k samples of --samples/--effort \\[default: 0.7]."),
    k: Optional[int] = typer.Option(None, "-k", "--top-k", help="Passages retrieved per question \\[default: 4]."),
    repeat_penalty: Optional[float] = typer.Option(None, "--repeat-penalty", help="> 1 discourages repeated tokens; 1 is off \\[default: 1.1]."),
    context_sentences: Optional[int] = typer.Option(None, "--context-sentences", help="Quote only the N retrieved sentences that rank best for the question (cosine, BM25 and passage rank fused); 0 quotes passages whole \\[default: 0]."),
    quote: Optional[bool] = typer.Option(None, "--quote/--no-quote", help="Answer with the span of the retrieved passages (up to 4 words) that the model scores most probable, cited \\[default: off]."),
):
    """Evaluate the assistant on GSM8K, MATH-500 or SQuAD-shaped JSONL; compare two runs.

    Writes report.json, report.md, predictions.jsonl and config.json to the run directory. gsm8k and math ask for step-by-step reasoning and a final \\boxed{} answer, scored by equivalence with the
    gold answer; qa asks for a short phrase, scored by SQuAD exact match and F1. Accuracies come with 95% Wilson
    intervals. An interrupted run continues with --resume -o DIR. Compare two runs with: dca eval compare A B
    """
    if ctx.invoked_subcommand is not None:
        return
    if task is None or data is None:
        err.print("[bold red]error:[/] --task and --data are required (see: dca eval --help)")
        raise typer.Exit(2)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .eval import EvalConfig, run_eval

    given = {"limit": limit, "model": model, "store_dir": store_dir, "effort": effort, "samples": samples,
             "out_dir": out_dir, "think": think, "thinking_budget": thinking_budget, "max_tokens": max_tokens,
             "temperature": temperature, "sample_temperature": sample_temperature, "top_k": k,
             "repeat_penalty": repeat_penalty, "context_sentences": context_sentences, "quote": quote}
    cfg = EvalConfig(task=task, data=data, resume=resume, force=force, **{n: v for n, v in given.items() if v is not None})
    err.print(f"[dim]run directory: {cfg.out_dir}[/]")
    bar = Progress(TextColumn(cfg.task), BarColumn(), MofNCompleteColumn(), TextColumn("accuracy {task.fields[acc]}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=err)
    bar_task = bar.add_task(cfg.task, total=None, acc="-")

    def progress(done: int, total: int, accuracy):
        bar.start()  # on the first call, once the settings and run directory are checked
        bar.update(bar_task, completed=done, total=total, acc="-" if accuracy is None else f"{accuracy:.1%}")

    try:
        report = run_eval(cfg, progress=progress)
    except KeyboardInterrupt:
        bar.stop()
        err.print(f"[yellow]interrupted[/]: finished items are kept; continue with the same flags and --resume -o {cfg.out_dir}")
        raise typer.Exit(130) from None
    finally:
        bar.stop()
    for s in report.skipped:
        err.print(f"[yellow]skipped[/] {cfg.data} line {s.line}: {s.reason}")
    table = Table("metric", "value", "95% interval", "n")
    for m in report.metrics.values():
        table.add_row(m.name, f"{m.value:.1%}", f"[{m.low:.1%}, {m.high:.1%}]", str(m.n))
    out.print(table)
    out.print(f"{report.items} items, k = {report.samples}: {report.mean_thinking_tokens:.1f} thinking + "
              f"{report.mean_answer_tokens:.1f} answer tokens per item ({report.mean_generated_tokens:.1f} generated), "
              f"{report.tokens_per_s:.1f} tok/s, {report.wall_s:.1f}s")
    out.print(f"wrote {cfg.out_dir}: report.json report.md predictions.jsonl config.json")


@eval_app.command("compare")
@_handles_errors
def eval_compare(a: Path = typer.Argument(..., help="report.json of run A (or its directory)."),
                 b: Path = typer.Argument(..., help="report.json of run B (or its directory).")):
    """Print each metric of runs A and B, the difference B - A with a 95% interval, and whether it is significant.

    The interval is a paired bootstrap over items (2,000 resamples, fixed seed) when both predictions.jsonl files
    are beside the reports; otherwise an unpaired Newcombe (Wilson) interval.
    """
    from .eval import compare_reports

    c = compare_reports(a, b)
    metrics = set(c.a.metrics) | set(c.b.metrics)
    table = Table("metric", "A", "B", "B - A", "95% interval", "significant", "method")

    def fmt(v, pct: bool, sign: str = "") -> str:
        return "-" if v is None else (f"{v:{sign}.1%}" if pct else f"{v:{sign}.1f}")

    for r in c.rows:
        pct = r.name in metrics
        interval = "" if r.low is None else f"[{fmt(r.low, pct, '+')}, {fmt(r.high, pct, '+')}]"
        significant = "" if r.significant is None else ("yes" if r.significant else "no")
        table.add_row(r.name, fmt(r.a, pct), fmt(r.b, pct), fmt(r.diff, pct, "+"), interval, significant, r.method or "")
    out.print(f"A: {a}\nB: {b}")
    out.print(table)
    for note in c.notes:
        out.print(f"[dim]note: {note}[/]")


from .cli_distill import distill_app  # noqa: E402  (its commands use the helpers above)

app.add_typer(distill_app, name="distill")

from .cli_quant import quant_app  # noqa: E402  (its commands use the helpers above)

app.add_typer(quant_app, name="quant")


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # dca calls math-verify without its signal-based timeout (it must work off the main thread); its
    # warning about that on every comparison is noise for the user.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # The CLI owns the terminal: no progress bars or info chatter from Hugging Face libraries.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    sys.exit(main())
