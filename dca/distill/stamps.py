"""Fingerprints of files and directories, for telling whether a stage's inputs changed since its output was made."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import ModelError
from ..paths import sha256_file

HASH_LIMIT = 1 << 30  # files up to 1 GiB are hashed; larger ones (and directories' files) go by size and mtime


def fingerprint(path: str | Path) -> dict:
    """What identifies ``path``'s content, cheaply enough to take on every run.

    Returns:
        ``{"path", "sha256"}`` for a file of at most :data:`HASH_LIMIT` bytes; ``{"path", "size", "mtime_ns"}``
        for a larger file, with ``"lora"``: the adapter's fingerprint, for a GGUF whose student's LoRA adapter
        ``dca quant export`` kept apart (:func:`dca.llm.registry.exported_lora`); for a directory ``{"path",
        "files": SHA-256 of the sorted (relative path, size, mtime_ns) of every file under it}``; ``{"path",
        "missing": True}`` when it does not exist.
    """
    p = Path(path).expanduser()
    name = str(p.resolve()) if p.exists() else str(p)
    if p.is_file():
        st = p.stat()
        mark = {"path": name, "sha256": sha256_file(p)} if st.st_size <= HASH_LIMIT else \
            {"path": name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if p.suffix == ".gguf":
            from ..llm.registry import exported_lora

            try:  # a base and the LoRA adapter llama.cpp applies over it are one model
                adapter = exported_lora(p)
            except ModelError as e:
                mark["lora"] = {"error": str(e)}
            else:
                if adapter is not None:
                    mark["lora"] = fingerprint(adapter)
        return mark
    if p.is_dir():
        listing = sorted((str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns)
                         for f in p.rglob("*") if f.is_file())
        return {"path": name, "files": hashlib.sha256(json.dumps(listing).encode()).hexdigest()}
    return {"path": name, "missing": True}


def digest(obj: object) -> str:
    """Hex SHA-256 of ``obj`` as canonical JSON (sorted keys; paths and other objects as strings)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
