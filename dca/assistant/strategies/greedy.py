"""Greedy decoding (or sampling at ``temperature``), streamed token by token: the thinking phase up to its
budget, then the answer."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import replace

from ..types import StreamChunk
from . import NO_PASSAGES, Generation, Outcome, register_strategy


@register_strategy("greedy")
class Greedy:
    """Think (when the answer has a thinking phase), close the thinking, then stream the answer.

    Subclasses change one phase: :meth:`think` (budget forcing) or :meth:`answer` (quote mode).
    """

    def think(self, gen: Generation) -> Generator[StreamChunk, None, str]:
        """Stream the thinking until the model closes it or ``thinking_budget`` tokens; return its text."""
        thought: list[str] = []
        yield from gen.stream(gen.prompt, kind="thinking", max_tokens=gen.config.thinking_budget,
                              stop=(gen.think_close,), sink=thought)
        return "".join(thought)

    def answer(self, gen: Generation, prompt: str) -> Generator[StreamChunk, None, Outcome]:
        """Stream the answer from ``prompt`` (the thinking closed in it) up to ``max_tokens``; its Outcome's
        ``generated_tokens`` covers the answer phase only (None: the answer text's tokens)."""
        said: list[str] = []
        limit = gen.config.max_tokens
        yield from gen.stream(prompt, kind="answer", max_tokens=limit, stop=NO_PASSAGES, sink=said)
        text = "".join(said).strip()
        # a piece is one token (several only inside a multi-byte character): the limit was reached when as many came
        # (tool replies are pieces the model did not generate: then count the text's tokens)
        pieces = len(said) if not gen.tools else 0
        truncated = bool(text) and not gen.cancel() and (pieces >= limit or gen.llm.count_tokens(text) >= limit)
        return Outcome(text=text, truncated=truncated)

    def run(self, gen: Generation) -> Generator[StreamChunk, None, Outcome]:
        prompt, thought = gen.prompt, ""
        if gen.thinking:
            thought = yield from self.think(gen)
            # Whether the model closed its thinking or ran out of budget, close it here.
            prompt = gen.close_thinking(prompt, thought)
        outcome = Outcome(text="")
        if not gen.cancel():
            outcome = yield from self.answer(gen, prompt)
        thinking = thought.strip()
        generated = outcome.generated_tokens
        if generated is not None and thinking:
            generated += gen.llm.count_tokens(thinking)
        return replace(outcome, thinking=thinking, generated_tokens=generated, prompt=prompt,
                       thinking_in_prompt=gen.thinking, tool_calls=tuple(gen.tools.calls))
