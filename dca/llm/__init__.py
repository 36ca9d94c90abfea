"""Language: the :class:`LLM` protocol with capability flags, the one model factory (:func:`load_llm`), the
model registry, and GGUF models through llama-cpp-python.

Modules: :mod:`.base` (the protocol), :mod:`.registry` (names -> GGUF paths, ``dca models``),
:mod:`.llamacpp` (:class:`LlamaCppLLM`), :mod:`.sampling` (k samples in parallel sequences),
:mod:`.scoring` (log-probabilities of given continuations), :mod:`.native` (the only module that touches
llama-cpp-python's internals). Importing this package does not import llama_cpp.
"""

from __future__ import annotations

from pathlib import Path

from ..bundled import BUNDLED_CHAT_MODEL
from .base import LLM, Completion, check_llm
from .registry import ModelEntry, check_gguf, list_models, register_model, remove_models, resolve_model

__all__ = [
    "BUNDLED_CHAT_MODEL", "LLM", "Completion", "LlamaCppLLM", "ModelEntry", "capable", "check_gguf", "check_llm",
    "list_models", "load_llm", "register_model", "remove_models", "resolve_model",
]


def capable(llm, capability: str) -> bool:
    """Whether ``llm`` declares ``can_<capability>`` (``sample``, ``score``): True only when it says so; a model
    that satisfies the protocol by shape without declaring a flag has none of the optional capabilities."""
    return bool(getattr(llm, f"can_{capability}", False))


def load_llm(model: LLM | str | Path | None = None, *, n_ctx: int = 4096, **kwargs) -> LLM:
    """The one way dca turns ``-m/--model`` into a model.

    Args:
        model: an :class:`LLM` (returned as it is), a name from ``dca models``, a GGUF path, or None for the
            bundled SmolLM2-135M-Instruct.
        n_ctx: context window in tokens.
        kwargs: more :class:`LlamaCppLLM` arguments (``n_threads``, ``n_gpu_layers``, ``seed``, ``name``: the
            display name, by default the GGUF's ``general.name``).

    Raises:
        ModelError: unknown name, missing or corrupt file (the message lists the known names).
        MissingDependencyError: llama-cpp-python is not installed.
    """
    if model is not None and not isinstance(model, (str, Path)):
        return model
    from .llamacpp import LlamaCppLLM

    return LlamaCppLLM(resolve_model(model), n_ctx=n_ctx, **kwargs)


def __getattr__(name: str):
    if name == "LlamaCppLLM":  # imported on use: its module needs nothing heavy, but keeps this package minimal
        from .llamacpp import LlamaCppLLM

        return LlamaCppLLM
    raise AttributeError(f"module 'dca.llm' has no attribute {name!r}")
