"""``dca rag ...``: ingest documents into a local RAG store and search it (a thin layer over :mod:`dca.rag`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.text import Text

from ..rag import StoreConfig
from .common import (
    default_store_dir,
    embedder,
    handles_errors,
    interrupted,
    out,
    print_error,
    print_json,
    print_table,
    print_warning,
    table,
)
from .options import config_option, json_option, store_dir_option, with_default
from .progress import ProgressView

app = typer.Typer(help="Knowledge: ingest documents into a local RAG store and search it.", no_args_is_help=True)
EMBEDDER_HELP = "The store's embedder directory, if not bundled."


def ingest(paths: list[Path], store_dir: Path | None, *, chunk_tokens: int | None = None,
           overlap_tokens: int | None = None, embedder_path: Path | None = None, config_path: Path | None = None):
    """Ingest ``paths`` and print the summary; returns the report."""
    from ..config import load_config
    from ..rag import Store, StoreConfig
    from .common import err

    config = load_config(StoreConfig, config_path, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)
    store = Store.create(default_store_dir(store_dir), embedder(embedder_path), config)
    for name, flag in (("chunk_tokens", "--chunk-tokens"), ("overlap_tokens", "--overlap-tokens")):
        if getattr(config, name) != getattr(store.config, name):
            print_warning("warning:", f"{store.path} was built with {flag} {getattr(store.config, name)}; {flag} "
                                      f"{getattr(config, name)} applies to new stores only (ingest into a new "
                                      "--store-dir to change it)")
    try:
        with ProgressView(err, transient=True) as view:
            report = store.ingest(paths, progress=view)
    except KeyboardInterrupt:
        info = store.info()
        pending = f"; {info.pending} chunks embedded for unfinished files are kept too" if info.pending else ""
        raise interrupted(f"the store keeps {info.files} whole files ({info.chunks} chunks){pending}; run the same "
                          "command to continue (unchanged files are skipped)") from None
    for w in report.warnings:
        print_warning("warning:", w)
    for path, reason in report.errors.items():
        print_warning("skipped", f"{path}: {reason}")
    if report.unsupported:
        from ..rag.loaders import SUPPORTED_SUFFIXES

        listed = ", ".join(Path(p).name for p in report.unsupported[:5]) + (", ..." if len(report.unsupported) > 5 else "")
        print_warning("left out", f"{len(report.unsupported)} file(s) of a type dca does not read ({listed}); "
                                  f"it reads {' '.join(sorted(SUPPORTED_SUFFIXES))}")
    info = store.info()
    out.print(f"{len(report.added)} added, {len(report.updated)} updated, {len(report.unchanged)} unchanged, "
              f"{len(report.errors)} failed; {report.chunks_added} chunks embedded, {report.chunks_reused} reused "
              f"in {report.seconds:.1f}s. Store {info.path}: {info.files} files, {info.chunks} chunks.")
    return report


@app.command("ingest")
@handles_errors
def rag_ingest(
    paths: List[Path] = typer.Argument(..., help="Files or directories (.txt .md .html .pdf .jsonl)."),
    store_dir: Optional[Path] = store_dir_option(),
    chunk_tokens: Optional[int] = typer.Option(None, "--chunk-tokens", help=with_default("Chunk budget in tokens (new stores).", StoreConfig, "chunk_tokens")),
    overlap_tokens: Optional[int] = typer.Option(None, "--overlap-tokens", help=with_default("Tokens shared by consecutive chunks (new stores).", StoreConfig, "overlap_tokens")),
    embedder_path: Optional[Path] = typer.Option(None, "--embedder", help="A sentence-transformers directory (default: bundled all-MiniLM-L6-v2)."),
    config_path: Optional[Path] = config_option("StoreConfig"),
):
    """Load, chunk, embed and index documents; unchanged files are skipped, changed ones replaced."""
    report = ingest(paths, store_dir, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens,
                    embedder_path=embedder_path, config_path=config_path)
    if report.errors:
        raise typer.Exit(1)


@app.command("search")
@handles_errors
def rag_search(
    query: str = typer.Argument(..., help="The search query."),
    store_dir: Optional[Path] = store_dir_option(),
    k: int = typer.Option(5, "-k", "--top-k", help="Number of chunks to show (>= 1; chat's -k 0 answers without retrieval)."),
    mode: str = typer.Option("hybrid", "--mode", help="dense | lexical | hybrid (normalized scores combined, the lexical weighted --lexical-weight)."),
    lexical_weight: Optional[float] = typer.Option(None, "--lexical-weight", help="The lexical ranking's weight in hybrid mode, 0-1; tune it for your documents with benchmarks/retrieval.py \\[default: 0.6]."),
    rerank: int = typer.Option(0, "--rerank", help="Reorder the first N hits with the bundled cross-encoder (ms-marco-MiniLM-L-12-v2), about 1 s for 20 on 2 cores; 0 is off."),
    embedder_path: Optional[Path] = typer.Option(None, "--embedder", help=EMBEDDER_HELP),
):
    """Print the chunks ranked for QUERY, with score and source."""
    from ..rag import Store

    store = Store.open(default_store_dir(store_dir), embedder(embedder_path))
    hits = store.search(query, k=k, mode=mode, lexical_weight=lexical_weight, rerank=rerank)
    if not hits:
        out.print("no results")
    for rank, h in enumerate(hits, 1):
        out.print(Text.assemble((f"{rank}.", "bold"), f" score {h.score:.4f}  cosine {h.similarity:.3f}  ",
                                (h.title, "cyan"), f"  ({h.source})"))
        text = " ".join(h.text.split())
        out.print(f"   {text[:300]}{'...' if len(text) > 300 else ''}")


@app.command("info")
@handles_errors
def rag_info(store_dir: Optional[Path] = store_dir_option(),
             embedder_path: Optional[Path] = typer.Option(None, "--embedder", help=EMBEDDER_HELP),
             files: bool = typer.Option(False, "--files", help="Also list the stored files.", metavar=""),
             as_json: bool = json_option()):
    """Show the store's counts, size, embedder and index type (and with --files, its files)."""
    from dataclasses import asdict

    from ..rag import Store

    store = Store.open(default_store_dir(store_dir), embedder(embedder_path))
    i = store.info()
    if as_json:
        print_json({**asdict(i), "file_paths": store.files()})
        return
    dim = f"{i.dim}-d" if i.dim else "dimension known once a chunk is stored"
    rows = [("path", i.path), ("format version", i.version), ("embedder", f"{i.embedder} ({dim})"),
            ("index", i.index_type), ("files", i.files), ("documents", i.documents), ("chunks", i.chunks),
            ("size", f"{i.bytes_on_disk / 1e6:.2f} MB"),
            ("chunking", f"{i.chunking['chunk_tokens']} tokens, overlap {i.chunking['overlap_tokens']}")]
    if i.pending:
        rows.append(("pending", f"{i.pending} chunks embedded by an interrupted ingest, reused by the next"))
    t = table("setting", "value", show_header=False)
    for key, value in rows:
        t.add_row(key, Text(str(value)))
    print_table(t)
    if files:
        for path in store.files():
            out.print(path)


@app.command("remove")
@handles_errors
def rag_remove(paths: List[Path] = typer.Argument(..., help="Files or directories to drop from the store."),
               store_dir: Optional[Path] = store_dir_option(),
               embedder_path: Optional[Path] = typer.Option(None, "--embedder", help=EMBEDDER_HELP)):
    """Drop the chunks of files (or of every file under a directory) from the store."""
    from ..rag import Store

    removed = Store.open(default_store_dir(store_dir), embedder(embedder_path)).remove(paths)
    if not removed:
        print_error(f"none of {', '.join(map(str, paths))} is in the store (see: dca rag info)")
        raise typer.Exit(1)
    out.print(f"removed {len(removed)} file(s): " + ", ".join(removed))
