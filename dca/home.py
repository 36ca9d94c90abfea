"""Where dca keeps its state: ``$DCA_HOME``, else ``~/.local/share/dca`` (resolved on each call)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def dca_home() -> Path:
    """Return dca's state directory, creating it if needed.

    ``DCA_HOME`` overrides the default ``$XDG_DATA_HOME/dca`` (``~/.local/share/dca``); it is read on
    every call so that tests and embedding apps can point it elsewhere at any time.
    """
    env = os.environ.get("DCA_HOME")
    if env:
        home = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        home = Path(base) / "dca"
    home.mkdir(parents=True, exist_ok=True)
    return home


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a partial one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
