"""The composition: retrieval -> prompt -> a test-time strategy -> citations.

:class:`Assistant` composes a model (:mod:`dca.llm`), an optional store (:mod:`dca.rag`) and a strategy
(:mod:`.strategies`: greedy, budget forcing, self-consistency, quote mode, or one registered by the user);
:class:`AssistantConfig` (:mod:`.config`) declares every setting once, with its flag and help; the answer's
types are in :mod:`.types`; passages and citations in :mod:`.citations`.
"""

from .citations import Source
from .config import DEFAULT_SYSTEM_PROMPT, EFFORT_PRESETS, AssistantConfig
from .core import Assistant
from .strategies import STRATEGIES, Generation, Outcome, Strategy, register_strategy
from .types import Answer, Sample, Stats, StreamChunk

__all__ = [
    "DEFAULT_SYSTEM_PROMPT", "EFFORT_PRESETS", "STRATEGIES", "Answer", "Assistant", "AssistantConfig",
    "Generation", "Outcome", "Sample", "Source", "Stats", "Strategy", "StreamChunk", "register_strategy",
]
