"""Resolve a stage's config dataclass from defaults, a YAML file and flags (flags > file > defaults)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TypeVar

from .errors import ConfigError

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, **flags) -> T:
    """Build ``cls`` (a config dataclass) from its defaults, the YAML mapping at ``path``, then ``flags``.

    Args:
        cls: e.g. :class:`dca.assistant.AssistantConfig` or :class:`dca.rag.StoreConfig`.
        path: a YAML file of ``field: value`` pairs (``-c/--config``); None for none.
        flags: field values from the command line; None means "not given" and is ignored.

    Raises:
        ConfigError: the file is unreadable or not a mapping, names an unknown field, or a value is out
            of range (raised by the dataclass's own validation).
    """
    values: dict = {}
    if path is not None:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"--config {path}: cannot read it as YAML ({e})") from e
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"--config {path}: expected a mapping of settings, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"--config {path}: unknown setting(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        values.update(data)
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"--config {path}: {e}") from e
