"""``dca models``: the bundled and registered models (a thin layer over :mod:`dca.llm.registry`)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.text import Text

from .common import err, handles_errors, out, print_json, print_table, table
from .options import json_option

app = typer.Typer(help="List the bundled and registered models, register a GGUF, or forget one.")


@app.callback(invoke_without_command=True)
@handles_errors
def models(ctx: typer.Context, as_json: bool = json_option()):
    """List the bundled models and the GGUF files registered or used by path (a file used by path is remembered
    under its file name; dca models remove NAME forgets it)."""
    if ctx.invoked_subcommand is not None:
        return
    from ..llm import list_models

    entries = list_models()
    if as_json:
        print_json(entries)
        return
    t = table("name", "kind", "origin", "size", "path")
    for m in entries:
        size = Text("missing", style="yellow") if m.missing else f"{m.size_bytes / 1e6:.1f} MB"
        t.add_row(m.name, m.kind, m.origin, size, m.path)
    print_table(t)
    if any(m.missing for m in entries):
        err.print(Text("files marked missing are gone; forget them with: dca models remove --missing", style="dim"))


@app.command("add")
@handles_errors
def models_add(name: str = typer.Argument(..., help="Name to use with -m/--model."),
               path: Path = typer.Argument(..., help="A GGUF file.")):
    """Register a GGUF file under a name."""
    from ..llm import register_model

    entry = register_model(name, path)
    out.print(f"registered {entry.name} -> {entry.path}")


@app.command("remove")
@handles_errors
def models_remove(names: List[str] = typer.Argument(None, help="Registered names to forget (see: dca models)."),
                  missing: bool = typer.Option(False, "--missing", help="Forget every entry whose file is gone.", metavar="")):
    """Forget registered models or GGUF files remembered from use by path; the files themselves are kept."""
    from ..llm import remove_models

    if not names and not missing:
        err.print(Text("name the models to forget, or pass --missing (see: dca models)", style="yellow"))
        raise typer.Exit(2)
    removed = remove_models(names or [], missing=missing)
    for entry in removed:
        out.print(f"forgot {entry.name} ({entry.path})")
    if not removed:
        out.print("nothing to forget")
