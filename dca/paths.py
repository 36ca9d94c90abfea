"""Where dca keeps its state, and how it writes files: ``$DCA_HOME``, atomic writes, manifests.

Every file or directory dca promises to leave whole is written through :func:`atomic_path` (or its
:func:`atomic_write_text` shortcut): the content goes to a temporary sibling ``.NAME.tmp-PID``, is fsynced,
then renamed onto ``NAME`` (``os.replace``, atomic on POSIX and Windows), so a reader sees the old version
or the new one, never a partial one, and a killed writer leaves only a temporary file that
:func:`remove_stale_temporaries` can clean. Every JSON manifest or stamp is read through
:func:`read_manifest`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import ManifestError


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


def temporary_sibling(path: Path, tag: str = "") -> Path:
    """``DIR/.NAME.tmp-PID[.TAG]``: the temporary name :func:`atomic_path` writes ``path`` under."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{'.' + tag if tag else ''}")


def fsync_path(path: Path) -> None:
    """Flush a file's data to disk (through a writable descriptor, which Windows requires)."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(final: str | Path, *, tag: str = "", sync: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``final`` to write (a file, or a directory to fill); when the block ends
    without an exception it replaces ``final`` whole, otherwise it is removed and ``final`` is left as it was.

    Args:
        final: the file or directory to write.
        tag: a suffix for the temporary name, for several temporaries of one target at once.
        sync: fsync a temporary file before the rename (directories are renamed as they are).

    An existing directory ``final`` is deleted just before the rename (a directory cannot be renamed over a
    non-empty one), so only that instant is not atomic: a crash there leaves ``final`` absent and the complete
    new version under its temporary name.

    Raises:
        OSError: writing or the rename failed; ``final`` is then as it was (see above for a directory).
    """
    final = Path(final)
    tmp = temporary_sibling(final, tag)
    _remove(tmp)
    try:
        yield tmp
        if sync and tmp.is_file():
            fsync_path(tmp)
        if tmp.is_dir() and final.is_dir():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            _remove(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so that readers see the old file or the new one, never a partial one."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: object) -> None:
    """Write ``obj`` as indented JSON (UTF-8, non-ASCII kept, unknown objects as strings) with
    :func:`atomic_write_text`."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Delete the temporaries of ``final`` (:func:`temporary_sibling`) whose writing process is gone (killed
    mid-write); returns what was removed. Temporaries of a live process are left alone."""
    removed = []
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            pid = int(tmp.name.split(".tmp-")[1].split(".")[0])
            os.kill(pid, 0)  # the writer is alive (this process included): leave its file alone
            continue
        except ProcessLookupError:
            pass
        except (ValueError, IndexError, PermissionError):
            continue
        _remove(tmp)
        removed.append(tmp)
    return removed


def read_manifest(path: str | Path, fmt: str | None = None) -> dict | None:
    """The JSON object in ``path`` (a manifest, a stamp, a run's ``config.json``), or None when there is no file.

    Args:
        path: the file.
        fmt: the ``"format"`` value the object must carry; None accepts any object.

    Raises:
        ManifestError: the file cannot be read or parsed, is not a JSON object, or is of another format.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(path, f"unreadable ({e})") from e
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ManifestError(path, f"not JSON ({e})") from e
    if not isinstance(data, dict):
        raise ManifestError(path, f"expected a JSON object, got {type(data).__name__}")
    if fmt is not None and data.get("format") != fmt:
        raise ManifestError(path, f"format is {data.get('format')!r}, expected {fmt!r}")
    return data


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_output_dir(out: Path, config: str, fmt: str, settings: dict, *, force: bool, held: str, foreign: str,
                     more: str = "") -> None:
    """Refuse ``-o out`` for a job that continues its own output: when ``out`` is a file, holds something else
    (no ``config`` manifest of format ``fmt``), or output made with other ``settings``, unless ``force``.

    Args:
        held: what a matching directory holds, for the message ("a STaR run").
        foreign: why another non-empty directory is refused ("holds no STaR run").
        more: what else may change on a rerun, for the message.

    Raises:
        ConfigError: naming ``-o`` and, for other settings, the settings that differ.
        ManifestError: ``config`` exists but is not a manifest of ``fmt``.
    """
    from .errors import ConfigError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out} is a file; choose a directory")
    stored = read_manifest(out / config, fmt) if (out / config).exists() else None
    if stored is not None and not force:
        saved = stored.get("settings", {})
        diffs = [k for k, v in settings.items() if saved.get(k) != v]
        if diffs:
            raise ConfigError(f"{out} holds {held} with other settings ({', '.join(diffs)}); rerun with the same "
                              f"flags to continue it{more}, or add --force to start over")
    elif out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"-o {out} exists and {foreign}; choose another, or --force")
