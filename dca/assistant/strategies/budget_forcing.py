"""Budget forcing (Muennighoff et al. 2025, "s1: Simple test-time scaling"): thinking that ends before
``min_thinking_tokens`` is continued after an appended "Wait", up to ``thinking_budget``."""

from __future__ import annotations

from collections.abc import Generator

from ..types import StreamChunk
from . import Generation, register_strategy
from .greedy import Greedy

WAIT = "\nWait"


@register_strategy("budget_forcing")
class BudgetForcing(Greedy):
    """Greedy decoding whose thinking phase lasts at least ``min_thinking_tokens`` (when the budget allows)."""

    def think(self, gen: Generation) -> Generator[StreamChunk, None, str]:
        cfg = gen.config
        stop = (gen.think_close,)
        thought: list[str] = []
        yield from gen.stream(gen.prompt, kind="thinking", max_tokens=cfg.thinking_budget, stop=stop, sink=thought)
        used = gen.llm.count_tokens("".join(thought))
        while used < min(cfg.min_thinking_tokens, cfg.thinking_budget) and not gen.cancel():
            before = len(thought)
            thought.append(WAIT)
            yield StreamChunk("thinking", text=WAIT)
            yield from gen.stream(gen.prompt + "".join(thought), kind="thinking", max_tokens=cfg.thinking_budget - used,
                                  stop=stop, sink=thought)
            if len(thought) == before + 1:  # nothing more to say
                break
            used = gen.llm.count_tokens("".join(thought))
        return "".join(thought)
