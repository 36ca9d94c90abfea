"""What every ``dca`` command module shares: the consoles, the typed-error handler, tables, and paths.

The CLI owns printing. Messages are printed as text, never as rich markup (a path or an install hint such as
``dca[qlora]`` keeps its brackets), and never hard-wrapped: a long line is left for the terminal to fold, so a
sentence or a command to copy is not broken at 80 columns in a log. Tables keep every cell whole: in a
terminal a column too wide folds inside its cell; in a pipe or a log the table takes the width it needs.
"""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.segment import Segment, Segments
from rich.table import Table
from rich.text import Text

from ..errors import DcaError
from .progress import PLAIN_EVERY_S

# markup off: a message is printed as it is (styles come from Text objects); soft_wrap: print() never inserts line
# breaks of its own (rich's default would break at the console width).
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(message: str, *, code: str = "error") -> None:
    """``error: MESSAGE`` on stderr, the message verbatim (no markup), on one line."""
    err.print(Text.assemble((f"{code}:", "bold red"), " ", message))


def print_warning(label: str, message: str) -> None:
    """``LABEL MESSAGE`` on stderr (``skipped``, ``warning``...), the message verbatim."""
    err.print(Text.assemble((label, "yellow"), " ", message))


def print_json(data) -> None:
    """Print ``data`` (dataclasses converted with :func:`dataclasses.asdict`) as indented JSON on stdout: the
    ``--json`` output of the commands that otherwise print a table. Values JSON cannot hold print as ``str()``."""
    import json
    from dataclasses import asdict, is_dataclass

    def plain(x):
        return asdict(x) if is_dataclass(x) and not isinstance(x, type) else str(x)

    out.print(json.dumps(data, indent=2, default=plain))


def interrupted(message: str) -> typer.Exit:
    """Print ``interrupted: MESSAGE`` (what was kept, and the command that continues) and return the exit to raise
    (code 130, as a shell gives Ctrl-C)."""
    print_warning("interrupted:", message)
    return typer.Exit(130)


def not_written(path) -> str:
    """The Ctrl-C message of a command whose output appears whole or not at all."""
    return f"{path} was not written (it appears whole or not at all); run the same command to start again"


def handles_errors(fn):
    """Turn dca's typed errors into a one-line message and exit code 1 (Ctrl-C: 130)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DcaError as e:
            print_error(str(e))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print(Text("interrupted", style="yellow"))
            raise typer.Exit(130) from None

    return wrapper


def table(*headers: str, **kwargs) -> Table:
    """A table whose cells fold instead of being cut with an ellipsis (see :func:`print_table`)."""
    t = Table(**kwargs)
    for h in headers:
        t.add_column(h, overflow="fold")
    return t


def print_table(t: Table, console: Console = out) -> None:
    """Print ``t`` whole: at its natural width when the output is not a terminal (a log or a pipe: nothing is
    cut or folded however narrow ``COLUMNS`` is), folded into the terminal's width otherwise."""
    if console.is_terminal:
        console.print(t)
        return
    width = Measurement.get(console, console.options.update_width(10_000), t).maximum
    for line in console.render_lines(t, console.options.update_width(width), pad=False):
        console.print(Segments([*line, Segment.line()]), soft_wrap=True, end="")  # neither wrapped nor cropped


def default_store_dir(store_dir: Path | None) -> Path:
    """``--store-dir``, or ``$DCA_HOME/store``."""
    from ..paths import dca_home

    return store_dir if store_dir is not None else dca_home() / "store"


class Status:
    """A spinner with a message on stderr while something runs, as a context manager or by :meth:`stop`. In a
    terminal only; in a pipe or a log, a plain line ``MESSAGE ... Ns`` every ``every_s`` seconds of a wait that lasts
    that long (a quick wait prints nothing), as :class:`~dca.cli.progress.ProgressView` does for progress."""

    def __init__(self, message: str, *, every_s: float = PLAIN_EVERY_S):
        self._status = err.status(Text(message, style="dim")) if err.is_terminal else None
        self._done = threading.Event()
        self._beat = None
        if self._status is not None:
            self._status.start()
        elif every_s > 0:
            self._beat = threading.Thread(target=self._heartbeat, args=(message, every_s), name="dca-status",
                                          daemon=True)
            self._beat.start()

    def _heartbeat(self, message: str, every_s: float) -> None:
        t0 = time.monotonic()
        while not self._done.wait(every_s):
            err.print(Text(f"{message} ... {time.monotonic() - t0:.0f}s", style="dim"))

    def stop(self) -> None:
        self._done.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __enter__(self) -> Status:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def answering_store_dir(store_dir: Path | None, no_store: bool = False) -> Path | None:
    """The store ``chat`` answers from: ``--store-dir``; else ``$DCA_HOME/store`` when a store is there (the
    default every ``dca rag`` command writes to); None with ``--no-store`` or when there is none."""
    if no_store:
        return None
    if store_dir is not None:
        return store_dir
    default = default_store_dir(None)
    return default if (default / "manifest.json").is_file() else None


def prompt_cache_dir() -> Path | None:
    """Where ``dca chat`` and ``dca serve`` keep their models' prompt-prefix states (:mod:`dca.llm.prompt_cache`):
    ``$DCA_HOME/cache/prompts``; None (no cache) when ``DCA_PROMPT_CACHE`` is ``0``/``off``/``false``/``no``."""
    import os

    from ..paths import dca_home

    if os.environ.get("DCA_PROMPT_CACHE", "").strip().lower() in ("0", "off", "false", "no"):
        return None
    return dca_home() / "cache" / "prompts"


def check_store_flags(store_dir: Path | None, no_store: bool) -> None:
    """Exit 2 when both ``--store-dir`` and ``--no-store`` are given."""
    if no_store and store_dir is not None:
        print_error("give --store-dir or --no-store, not both")
        raise typer.Exit(2)


def load_assistant(model, store_dir: Path | None, no_store: bool, config, chat_template):
    """The :class:`~dca.assistant.Assistant` of ``chat`` and ``serve``: loaded under a status line, then the notice of a
    model prompted without a chat template and the store it answers from, on stderr."""
    from ..assistant import Assistant

    with Status("loading the model and the store"):
        bot = Assistant(model=model, store=answering_store_dir(store_dir, no_store), config=config,
                        chat_template=chat_template, prompt_cache=prompt_cache_dir())
    notice = describe_prompting(bot.llm)
    if notice is not None:
        err.print(notice)
    err.print(describe_store(bot.store))
    return bot


def describe_store(store) -> Text:
    """One dim line saying what an answer draws on: the store and its counts, or the model alone."""
    if store is None:
        return Text("no store: answering from the model alone (add documents with: dca rag ingest PATH)", style="dim")
    info = store.info()
    return Text(f"store: {info.path} ({info.files} files, {info.chunks} chunks)", style="dim")


def describe_prompting(llm) -> Text | None:
    """A notice when the model is prompted without a chat template (its GGUF has none and no --chat-template was
    given): plain completion prompting, and how to name a template. None otherwise."""
    template = getattr(llm, "template", None)
    if template is None or template.source != "completion":
        return None
    return Text(f"notice: {llm.name} has no chat template in its GGUF (a base model?): prompting it as text to "
                "continue (Question: ... Answer:); name a template with --chat-template gemma|chatml|FILE",
                style="yellow")


def embedder(path: Path | None):
    """The sentence-transformers embedder at ``path`` (``--embedder``), or the bundled one
    (:func:`dca.rag.default_embedder`: through llama.cpp where it can, ``DCA_EMBEDDER_BACKEND`` to choose)."""
    from ..rag import SentenceTransformerEmbedder, default_embedder

    return SentenceTransformerEmbedder(path) if path is not None else default_embedder()
