"""dca: divide-and-conquer of ability for small language models.

Language from a small GGUF model (llama-cpp-python, CPU), knowledge from a local RAG store
(:mod:`dca.rag`), reasoning from a thinking phase with a token budget. ``import dca`` is cheap: torch,
transformers, faiss and llama_cpp are imported only when a model or store is used.

Example:
    >>> from dca import Assistant
    >>> bot = Assistant(store="~/notes-store")          # bundled SmolLM2-135M-Instruct
    >>> answer = bot.ask("What does the with statement do?")
    >>> answer.text, [s.source for s in answer.citations]
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "Assistant": "dca.assistant",
    "AssistantConfig": "dca.assistant",
    "Answer": "dca.assistant",
    "StreamChunk": "dca.assistant",
    "register_strategy": "dca.assistant",
    "Store": "dca.rag",
    "open_store": "dca.rag",
    "DcaError": "dca.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dca' has no attribute {name!r}")
