"""Streaming generation with tools (:mod:`dca.tools`) over any model's :meth:`~dca.llm.LLM.generate`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..tools import ToolRunner
    from .base import LLM


def generate_with_tools(llm: LLM, prompt: str, runner: ToolRunner, *, max_tokens: int, temperature: float = 0.0,
                        stop: Sequence[str] = (), repeat_penalty: float = 1.0,
                        cancel: Callable[[], bool] | None = None) -> Iterator[str]:
    """Continue ``prompt`` as :meth:`LLM.generate` does, answering tool calls on the way.

    After each piece the runner looks at the text generated so far; when a tool answers a call, the rest of that
    piece is dropped, the reply is yielded as a piece of its own, and generation restarts from ``prompt`` + the
    text so far (llama-cpp-python reuses the KV cache of the common prefix, so a restart costs only the tokens
    after it). ``max_tokens`` bounds the pieces the model generates (about one token each), not the replies.
    The calls, answered or not, are in ``runner.calls``.

    Yields:
        text pieces, the tool replies among them.
    """
    text = ""
    used = 0
    if runner:
        runner.begin()
    while used < max_tokens:
        restarted = False
        for piece in llm.generate(prompt + text, max_tokens=max_tokens - used, temperature=temperature, stop=stop,
                                  repeat_penalty=repeat_penalty, cancel=cancel):
            used += 1
            start = len(text)
            text += piece
            hit = runner.step(text) if runner else None
            if hit is None:
                yield piece
                continue
            cut, insert = hit
            if cut > start:
                yield text[start:cut]
            yield insert
            text = text[:cut] + insert
            restarted = True
            break
        if not restarted or (cancel is not None and cancel()):
            return
