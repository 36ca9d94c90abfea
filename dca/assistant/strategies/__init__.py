"""Test-time strategies: how the assistant spends compute on one answer, behind one small interface.

The :class:`~dca.assistant.Assistant` retrieves, renders the prompt, then hands a :class:`Generation` (the
model, the prompt, the settings) to a strategy. The strategy's :meth:`Strategy.run` is a generator: it yields
``thinking`` and ``answer`` :class:`~dca.assistant.StreamChunk` pieces as it produces them, and returns an
:class:`Outcome` (the answer, its thinking, the samples and votes, the tokens it decoded); the assistant then
resolves citations and measures. mlx-lm layers generation the same way (``generate_step`` ->
``stream_generate`` -> ``generate``).

A new strategy is a new file plus one registration::

    from dca.assistant import Outcome, register_strategy

    @register_strategy("echo")
    class Echo:
        def run(self, gen):
            yield from gen.answer_piece(gen.question)
            return Outcome(text=gen.question)

and ``AssistantConfig(strategy="echo")``, ``dca chat --strategy echo``, ``dca eval --strategy echo``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ...errors import ConfigError
from ...tools import ToolCall, ToolRunner
from ..types import Sample, StreamChunk

if TYPE_CHECKING:
    from ...llm import LLM
    from ...voting import Vote
    from ..citations import Source
    from ..config import AssistantConfig
    from ..verifier import Verifier

# For models without think tags: budget forcing over a plain-text scaffold (Muennighoff et al. 2025, "s1").
SCAFFOLD_THINK = "Let's think step by step.\n"
SCAFFOLD_ANSWER = "\n\nFinal answer:"
NO_PASSAGES = ("<passage", "</passage")  # stop strings: a small model may go on to write passages of its own


@dataclass(frozen=True)
class Outcome:
    """What a strategy returns.

    Attributes:
        text: the answer, before citation resolution ("" when there is none).
        thinking: the thinking text ("" when none).
        samples: the k sampled answers (self-consistency), else empty.
        votes: the vote over ``samples``, best first.
        generated_tokens: tokens decoded for this answer, all samples or scored candidates included; None
            counts the thinking and answer tokens.
        streamed: the answer came token by token (its rate is a decode rate after the first token); False when it
            came whole after one batch of work (samples, scored candidates: the rate is over that work).
        prompt: the last prompt the model read, the model's own thinking included when it was put back into the
            prompt; None for the prompt the strategy was given.
        thinking_in_prompt: ``prompt`` holds the thinking (so its tokens are not counted as prompt tokens).
        truncated: the answer was cut at its token limit.
        tool_calls: the tool calls made while producing ``text`` and ``thinking`` (:mod:`dca.tools`).
        chosen: the index in ``samples`` of the sample answered with; None without samples.
    """

    text: str
    thinking: str = ""
    samples: tuple[Sample, ...] = ()
    votes: tuple[Vote, ...] = ()
    generated_tokens: int | None = None
    streamed: bool = True
    prompt: str | None = None
    thinking_in_prompt: bool = False
    truncated: bool = False
    tool_calls: tuple[ToolCall, ...] = ()
    chosen: int | None = None


@dataclass
class Generation:
    """What a strategy is given for one answer.

    Attributes:
        llm: the model (check ``llm.can_sample`` / ``llm.can_score`` before using those methods).
        prompt: the rendered prompt, ending in the open assistant turn; when ``thinking``, it also holds the
            opening of the thinking phase (the model's think tag, or the scaffold's "Let's think step by
            step."); when not, a model with think tags has an empty think block.
        config: the settings, ``effort`` already applied.
        thinking: the answer begins with a thinking phase.
        question: the user's message.
        sources: the numbered passages quoted in the prompt (empty without retrieval).
        cancel: True once the caller asked to stop; poll it between steps.
        tools: the tool calls of this answer (:class:`dca.tools.ToolRunner`; empty when ``config.tools`` is):
            :meth:`stream` answers them; strategies that sample pass ``tools.tools`` to :meth:`LLM.sample`.
        verifier: the verifier of ``config.verifier`` (:class:`dca.assistant.verifier.Verifier`), or None.
    """

    llm: LLM
    prompt: str
    config: AssistantConfig
    thinking: bool
    question: str
    sources: tuple[Source, ...]
    cancel: Callable[[], bool]
    tools: ToolRunner = field(default_factory=lambda: ToolRunner(()))
    verifier: Verifier | None = None

    @property
    def token_budget(self) -> int:
        """Most tokens one answer may take: ``max_tokens``, plus ``thinking_budget`` (and 8 for the tags) when
        thinking. The prompt was fitted to leave this much of the context free."""
        cfg = self.config
        return cfg.max_tokens + (cfg.thinking_budget + 8 if self.thinking else 0)

    @property
    def think_close(self) -> str:
        """The marker that ends thinking: the model's closing tag, or the scaffold's "Final answer:"."""
        tags = self.llm.think_tags
        return tags[1] if tags else SCAFFOLD_ANSWER.strip()

    @property
    def think_tags(self) -> tuple[str, str]:
        """(opening, closing) markers of the thinking phase: the model's tags, or the scaffold's."""
        tags = self.llm.think_tags
        return tags if tags else (SCAFFOLD_THINK.strip(), SCAFFOLD_ANSWER.strip())

    def close_thinking(self, prompt: str, thought: str) -> str:
        """``prompt`` with ``thought`` and the end of the thinking phase appended: what the answer continues."""
        tags = self.llm.think_tags
        close = "\n" + tags[1] + "\n\n" if tags else SCAFFOLD_ANSWER
        return prompt + thought.rstrip() + close

    def stream(self, prompt: str, *, kind: str, max_tokens: int, stop: tuple[str, ...], sink: list[str],
               temperature: float | None = None) -> Iterator[StreamChunk]:
        """Decode from ``prompt`` with :meth:`LLM.generate` (the config's temperature and repeat penalty; tool
        calls answered by :func:`dca.llm.tools.generate_with_tools` when there are tools), yielding each piece as
        a ``kind`` chunk and appending it to ``sink``."""
        from ...llm.tools import generate_with_tools

        cfg = self.config
        kwargs = dict(max_tokens=max_tokens, temperature=cfg.temperature if temperature is None else temperature,
                      stop=stop, repeat_penalty=cfg.repeat_penalty, cancel=self.cancel)
        pieces = (generate_with_tools(self.llm, prompt, self.tools, **kwargs) if self.tools
                  else self.llm.generate(prompt, **kwargs))
        for piece in pieces:
            sink.append(piece)
            yield StreamChunk(kind, text=piece)

    def answer_piece(self, text: str) -> Iterator[StreamChunk]:
        """One ``answer`` chunk holding ``text`` (nothing for "")."""
        if text:
            yield StreamChunk("answer", text=text)


@runtime_checkable
class Strategy(Protocol):
    """How one answer is produced from a :class:`Generation`."""

    def run(self, gen: Generation) -> Generator[StreamChunk, None, Outcome]:
        """Yield ``thinking``/``answer`` chunks as they are produced; return the :class:`Outcome`."""
        ...


STRATEGIES: dict[str, Callable[[], Strategy]] = {}


def register_strategy(name: str):
    """Class decorator (or call with a factory): make ``name`` a value of ``strategy`` / ``--strategy``.

    Raises:
        ValueError: ``name`` is ``auto`` or registered already.
    """

    def register(factory):
        if name == "auto" or name in STRATEGIES:
            raise ValueError(f"strategy name {name!r} is {'reserved' if name == 'auto' else 'taken'}")
        STRATEGIES[name] = factory
        return factory

    return register


def unregister_strategy(name: str) -> None:
    """Remove a registered strategy (for plug-ins and tests)."""
    STRATEGIES.pop(name, None)


def choose_strategy(cfg: AssistantConfig, thinking: bool) -> str:
    """The strategy ``auto`` stands for: verifier-weighted voting for k > 1 samples and a verifier,
    self-consistency for k > 1 samples, quote mode for ``quote``, budget forcing when a minimum of thinking is
    asked and the answer thinks, else greedy decoding."""
    if cfg.strategy != "auto":
        return cfg.strategy
    if cfg.samples > 1 and cfg.verifier:
        return "weighted_vote"
    if cfg.samples > 1:
        return "self_consistency"
    if cfg.quote:
        return "quote"
    if thinking and cfg.min_thinking_tokens > 0:
        return "budget_forcing"
    return "greedy"


def get_strategy(name: str) -> Strategy:
    """A new instance of the strategy registered as ``name``.

    Raises:
        ConfigError: no strategy of that name.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"--strategy {name!r} is not registered; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()


# The built-in strategies register themselves on import.
from . import beam_search, budget_forcing, greedy, quote, self_consistency, verifier_search  # noqa: E402,F401
