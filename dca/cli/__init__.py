"""The ``dca`` command line: a thin Typer layer over the library (it owns printing and exit codes).

One module per command group: :mod:`.models`, :mod:`.rag`, :mod:`.chat` (``chat``, ``demo``), :mod:`.eval`,
:mod:`.distill`, :mod:`.quant`; shared consoles and error handling in :mod:`.common`, option groups in
:mod:`.options`, the one progress renderer in :mod:`.progress`.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer

from . import chat, distill, eval, models, quant, rag, serve

app = typer.Typer(help="dca: small local language models composed with a RAG store and a thinking phase, offline.",
                  no_args_is_help=True, add_completion=False)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"dca {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print dca's version and exit.", metavar=""),
          verbose: bool = typer.Option(False, "--verbose", "-v", metavar="",
                                       help="Show dca's debug log on stderr, llama.cpp's log lines among it.")):
    """dca: small local language models composed with a RAG store and a thinking phase, offline."""
    if verbose:
        logging.getLogger("dca").setLevel(logging.DEBUG)


app.add_typer(rag.app, name="rag")
app.add_typer(models.app, name="models")
app.command()(chat.chat)
app.command()(chat.demo)
app.command()(serve.serve)
app.add_typer(eval.app, name="eval")
app.add_typer(distill.app, name="distill")
app.add_typer(quant.app, name="quant")


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # dca calls math-verify without its signal-based timeout (it must work off the main thread); its
    # warning about that on every comparison is noise for the user.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # a PDF's quirks; unreadable files are reported by dca
    # The CLI owns the terminal: no progress bars or info chatter from the libraries (dca draws its own progress),
    # and no deprecation notices meant for the developers of code that calls them.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm bars created directly (transformers' GGUF loading)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(?!dca\b)")
    app()


if __name__ == "__main__":
    sys.exit(main())
