"""The main job on bundled defaults: a store over the Python language reference, and cited answers.

The corpus is ``pydoc_data.topics`` (the help texts of the Python language reference that ship with
CPython), so the demo is real text available offline on every machine.
"""

from __future__ import annotations

import json
from pathlib import Path

from .paths import atomic_write_text, dca_home

DEMO_QUESTIONS = (
    "What does the nonlocal statement do?",
    "Which methods does the with statement call on the context manager?",
    "What is the difference between the operators is and ==?",
)


def write_python_reference_corpus(path: Path) -> Path:
    """Write the Python language reference topics as a JSONL corpus (``id``, ``title``, ``text`` per line).

    Args:
        path: the ``.jsonl`` file to write (atomically; rewritten only when its content would change, so
            re-ingesting it is a no-op).

    Returns:
        ``path``.
    """
    from pydoc_data.topics import topics

    lines = [json.dumps({"id": key, "title": f"Python reference: {key}", "text": text})
             for key, text in sorted(topics.items())]
    content = "\n".join(lines) + "\n"
    if not path.exists() or path.read_text(encoding="utf-8") != content:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, content)
    return path


def demo_paths() -> tuple[Path, Path]:
    """(corpus file, store directory) of the demo under ``$DCA_HOME/demo``."""
    base = dca_home() / "demo"
    return base / "python-reference.jsonl", base / "store"
