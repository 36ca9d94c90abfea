"""``dca chat`` and ``dca demo``: answers streamed from the assistant, with their sources (a thin layer over
:class:`dca.assistant.Assistant`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.text import Text

from .common import Status, check_store_flags, handles_errors, load_assistant, out
from .options import assistant_options, chat_template_option, config_option, model_option


def print_answer_stream(bot, question: str, show_thinking: bool):
    """Stream the answer to ``question`` on stdout, then its cited sources, tool calls (with ``show_thinking``),
    votes and figures; returns the :class:`~dca.assistant.Answer`."""
    answer = None
    in_thinking = False
    printed = ""  # the last answer piece, to place the truncation marker
    cfg = bot.config.resolved()
    waiting = Status(f"sampling {cfg.k} answers" if cfg.k > 1 else "scoring the passages' spans" if cfg.quote
                     else "reading the passages" if bot.store else "thinking")
    try:
        for chunk in bot.stream(question):
            if chunk.kind in ("answer", "done") or (chunk.kind == "thinking" and show_thinking):
                waiting.stop()  # hidden thinking keeps the spinner turning
            if chunk.kind == "thinking" and show_thinking:
                if not in_thinking:
                    out.print(Text("thinking: ", style="dim"), end="")
                    in_thinking = True
                out.print(chunk.text, end="", style="dim")
            elif chunk.kind == "answer":
                if in_thinking:
                    out.print()
                    in_thinking = False
                out.print(chunk.text, end="")
                printed = chunk.text or printed
            elif chunk.kind == "done":
                answer = chunk.answer
    finally:
        waiting.stop()
    if answer is not None and answer.truncated:
        space = "" if printed[-1:].isspace() else " "
        out.print(Text(f"{space}[cut at --max-tokens {cfg.max_tokens}]", style="dim yellow"), end="")
    out.print()
    if answer is not None:
        added = {s.number for s in answer.sources if s.cited_by == "attribution"}
        if added:
            markers = ", ".join(f"[{n}]" for n in sorted(added))
            out.print(Text(f"(the model cited nothing; dca added {markers} after the sentences that restate "
                           f"{'that passage' if len(added) == 1 else 'those passages'})", style="dim"))
        print_sources(answer, cited_only=True)
        if show_thinking and answer.tool_calls:
            out.print(Text(f"tool calls ({len(answer.tool_calls)}): " + "; ".join(map(str, answer.tool_calls)),
                           style="dim"))
        if answer.votes:
            out.print(Text(describe_votes(answer), style="dim"))
        st = answer.stats
        out.print(Text(f"{st.answer_tokens} answer + {st.thinking_tokens} thinking tokens, {st.tokens_per_s:.1f} "
                       f"tok/s, first token {st.first_token_s:.2f}s, total {st.total_s:.2f}s", style="dim"))
    return answer


def _short(answer: str, width: int = 32) -> str:
    answer = " ".join(answer.split())
    return answer if len(answer) <= width else answer[:width - 3] + "..."


def describe_votes(answer) -> str:
    """The self-consistency vote in words: the winner with its count, the other answers, ties, and samples
    without an answer (:mod:`dca.voting`)."""
    k = len(answer.samples)
    top, others = answer.votes[0], answer.votes[1:]
    line = f"vote over {k} samples: {_short(top.answer)} won ({top.count} of {k})"
    tied = [v for v in others if v.count == top.count]
    if tied:
        line += f", tied on count with {len(tied)} other answer{'s' if len(tied) > 1 else ''}, chosen by confidence"
    if others:
        line += "; others: " + ", ".join(f"{_short(v.answer)} x{v.count}" for v in others)
    unanswered = sum(s.answer is None for s in answer.samples)
    if unanswered:
        line += f"; {unanswered} without an answer"
    return line


def print_sources(answer, cited_only: bool) -> None:
    """One line per source: ``[n]``, ``cited`` when the answer cites it, title, document and cosine."""
    sources = answer.citations if cited_only else answer.sources
    for s in sources:
        mark = " cited" if s.cited else "      "
        out.print(Text.assemble((f"[{s.number}]", "cyan"), mark, f"  {s.title}  ",
                                (f"({s.source}, cosine {s.similarity:.2f})", "dim")))


@handles_errors
@assistant_options
def chat(
    question: Optional[str] = typer.Argument(None, help="Ask one question and exit; without it, start a chat session."),
    model: Optional[str] = model_option(),
    store_dir: Optional[Path] = typer.Option(None, "--store-dir", "-s", help="RAG store to answer from \\[default: $DCA_HOME/store when it holds one]."),
    no_store: bool = typer.Option(False, "--no-store", help="Answer from the model alone, even when the default store exists.", metavar=""),
    show_thinking: bool = typer.Option(False, "--show-thinking", help="Print the thinking (hidden by default).", metavar=""),
    chat_template: Optional[str] = chat_template_option(),
    config_path: Optional[Path] = config_option("AssistantConfig"),
    settings: dict = None,
):
    """Chat with a local model, answering from a RAG store with citations [1], [2].

    In a session: /sources shows the passages of the last answer, /reset forgets the conversation, /exit quits.
    """
    from ..assistant import AssistantConfig
    from ..config import load_config

    config = load_config(AssistantConfig, config_path, **settings)
    check_store_flags(store_dir, no_store)
    bot = load_assistant(model, store_dir, no_store, config, chat_template)
    if question is not None:
        print_answer_stream(bot, question, show_thinking)
        return
    out.print(Text.assemble(("dca chat", "bold"), f" with {bot.llm.name}"
                            f"{' and ' + str(bot.store.path) if bot.store is not None else ''}. "
                            "Commands: /sources /reset /exit"))
    last = None
    while True:
        try:
            line = out.input(Text("> ", style="bold green")).strip()
        except (EOFError, KeyboardInterrupt):
            out.print()
            return
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            bot.reset()
            out.print(Text("conversation reset", style="dim"))
        elif line == "/sources":
            if last is None or not last.sources:
                out.print(Text("no sources for the last answer", style="dim"))
            else:
                print_sources(last, cited_only=False)
        elif line.startswith("/"):
            out.print(Text.assemble((f"unknown command {line}", "yellow"), "; commands: /sources /reset /exit"))
        else:
            try:
                last = print_answer_stream(bot, line, show_thinking)
            except KeyboardInterrupt:
                out.print(Text("\n(stopped)", style="dim"))


@handles_errors
def demo(model: Optional[str] = model_option(),
         question: Optional[List[str]] = typer.Option(None, "-q", "--question", help="Ask these instead of the demo questions.")):
    """The main job on bundled defaults: ingest the Python language reference, then answer questions with citations."""
    from ..assistant import Assistant
    from ..demo import DEMO_QUESTIONS, demo_paths, write_python_reference_corpus
    from .rag import ingest

    corpus, store_dir = demo_paths()
    write_python_reference_corpus(corpus)
    out.print(Text.assemble(("1. Knowledge", "bold"), f": ingesting the Python language reference ({corpus}) into "
                            f"{store_dir}"))
    if ingest([corpus], store_dir).errors:
        raise typer.Exit(1)
    with Status("loading the model"):
        bot = Assistant(model=model, store=store_dir)
    out.print(Text.assemble(("2. Language", "bold"), f": {bot.llm.name} "
                            f"({'thinking' if bot.thinking else 'no thinking phase'})"))
    for q in question or DEMO_QUESTIONS:
        bot.reset()
        out.print(Text.assemble("\n", ("Q:", "bold green"), f" {q}\n", ("A:", "bold"), " "), end="")
        print_answer_stream(bot, q, show_thinking=False)
