"""``dca models``: the bundled and registered models (a thin layer over :mod:`dca.llm.registry`)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import handles_errors, out, print_table, table

app = typer.Typer(help="List the bundled and registered models, or register a GGUF.")


@app.callback(invoke_without_command=True)
@handles_errors
def models(ctx: typer.Context):
    """List the bundled models and the GGUF files registered or used by path."""
    if ctx.invoked_subcommand is not None:
        return
    from ..llm import list_models

    t = table("name", "kind", "origin", "size", "path")
    for m in list_models():
        t.add_row(m.name, m.kind, m.origin, f"{m.size_bytes / 1e6:.1f} MB", m.path)
    print_table(t)


@app.command("add")
@handles_errors
def models_add(name: str = typer.Argument(..., help="Name to use with -m/--model."),
               path: Path = typer.Argument(..., help="A GGUF file.")):
    """Register a GGUF file under a name."""
    from ..llm import register_model

    entry = register_model(name, path)
    out.print(f"registered {entry.name} -> {entry.path}")
