"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``, so this is on sys.path)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path


def run_main(main: Callable[[], int | None]) -> None:
    """Run a script's ``main`` and exit with its status through the ``dca`` CLI's own error handling
    (:func:`dca.cli.common.handles_errors`): a dca error (bad input, a missing file or model) prints ``error: MESSAGE``
    on stderr alone and exits 1, Ctrl-C exits 130; any other exception keeps its traceback (a bug, not bad input)."""
    import typer

    from dca.cli.common import handles_errors

    try:
        status = handles_errors(main)()
    except typer.Exit as e:
        sys.exit(e.exit_code)
    sys.exit(status)


def default_data_dir() -> Path:
    """``../shared/data`` beside the repository (the project's data sets; never needed by users)."""
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def read_jsonl(path: Path, limit: int = 0) -> list[dict]:
    """The first ``limit`` records of a JSONL file (all when 0), blank lines skipped.

    Raises:
        LoaderError: the file cannot be opened, is not UTF-8, or a line is not JSON (the message names the file
            and line).
    """
    from dca.errors import LoaderError

    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise LoaderError(path, f"line {n} is not JSON ({e.msg})") from None
                    if limit and len(rows) >= limit:
                        break
    except OSError as e:
        raise LoaderError(path, f"cannot open it ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise LoaderError(path, f"not UTF-8 text (byte {e.start} of a line)") from None
    return rows


def write_json(path: Path | None, data: dict) -> None:
    """Write the figures to ``path`` (``--json-out``), if one was given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def build_gsm8k_sft(data_dir: Path, n: int, work: Path) -> Path:
    """The first ``n`` GSM8K train questions as dca traces (reference solutions), one messages JSONL in ``work``."""
    from dca.distill.importers import convert_record
    from dca.distill.traces import to_messages

    out = work / "sft.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for i, rec in enumerate(read_jsonl(data_dir / "gsm8k_train.jsonl", n)):
            t = convert_record(rec, "gsm8k", default_id=f"gsm8k_train_{i}")
            f.write(json.dumps({"messages": to_messages(t), "id": t.id}) + "\n")
    return out
