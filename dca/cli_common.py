"""What every ``dca`` command module shares: the consoles and the typed-error handler (cli.py owns printing)."""

from __future__ import annotations

import functools

import typer
from rich.console import Console

from .errors import DcaError

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def handles_errors(fn):
    """Turn dca's typed errors into a one-line message and exit code 1 (Ctrl-C: 130)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DcaError as e:
            err.print(f"[bold red]error:[/] {e}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper
