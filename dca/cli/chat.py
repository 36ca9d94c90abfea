"""``dca chat`` and ``dca demo``: answers streamed from the assistant, with their sources (a thin layer over
:class:`dca.assistant.Assistant`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.text import Text

from .common import handles_errors, out
from .options import assistant_options, config_option, model_option


def print_answer_stream(bot, question: str, show_thinking: bool):
    """Stream the answer to ``question`` on stdout, then its cited sources, votes and figures; returns the
    :class:`~dca.assistant.Answer`."""
    answer = None
    in_thinking = False
    for chunk in bot.stream(question):
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
        elif chunk.kind == "done":
            answer = chunk.answer
    out.print()
    if answer is not None:
        added = {s.number for s in answer.sources if s.cited_by == "attribution"}
        if added:
            out.print(Text(f"(citations added by attribution: {', '.join(f'[{n}]' for n in sorted(added))})",
                           style="dim"))
        print_sources(answer, cited_only=True)
        if answer.votes:
            tally = ", ".join(f"{v.answer} x{v.count}" for v in answer.votes)
            out.print(Text(f"votes over {answer.stats.samples} samples: {tally}", style="dim"))
        st = answer.stats
        out.print(Text(f"{st.answer_tokens} answer + {st.thinking_tokens} thinking tokens, {st.tokens_per_s:.1f} "
                       f"tok/s, first token {st.first_token_s:.2f}s, total {st.total_s:.2f}s", style="dim"))
    return answer


def print_sources(answer, cited_only: bool) -> None:
    """One line per source: ``[n]*`` (``*`` when cited), title, document and cosine."""
    sources = answer.citations if cited_only else answer.sources
    for s in sources:
        mark = "*" if s.cited else " "
        out.print(Text.assemble((f"[{s.number}]{mark}", "cyan"), f" {s.title}  ",
                                (f"({s.source}, cosine {s.similarity:.2f})", "dim")))


@handles_errors
@assistant_options
def chat(
    question: Optional[str] = typer.Argument(None, help="Ask one question and exit; without it, start a chat session."),
    model: Optional[str] = model_option(),
    store_dir: Optional[Path] = typer.Option(None, "--store-dir", "-s", help="RAG store to answer from (none: no retrieval)."),
    show_thinking: bool = typer.Option(False, "--show-thinking", help="Print the thinking (hidden by default)."),
    config_path: Optional[Path] = config_option("AssistantConfig"),
    settings: dict = None,
):
    """Chat with a local model, answering from a RAG store with citations [1], [2].

    In a session: /sources shows the passages of the last answer, /reset forgets the conversation, /exit quits.
    """
    from ..assistant import Assistant, AssistantConfig
    from ..config import load_config

    config = load_config(AssistantConfig, config_path, **settings)
    bot = Assistant(model=model, store=store_dir, config=config)
    if question is not None:
        print_answer_stream(bot, question, show_thinking)
        return
    out.print(Text.assemble(("dca chat", "bold"), f" with {bot.llm.name}{' and ' + str(store_dir) if store_dir else ''}. "
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
    bot = Assistant(model=model, store=store_dir)
    out.print(Text.assemble(("2. Language", "bold"), f": {bot.llm.name} "
                            f"({'thinking' if bot.thinking else 'no thinking phase'})"))
    for q in question or DEMO_QUESTIONS:
        bot.reset()
        out.print(Text.assemble("\n", ("Q:", "bold green"), f" {q}\n", ("A:", "bold"), " "), end="")
        print_answer_stream(bot, q, show_thinking=False)
