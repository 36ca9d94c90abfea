"""The :class:`LLM` protocol that dca composes with retrieval and test-time compute, with capability flags.

Every model offers ``render``, ``count_tokens`` and streaming ``generate``. What only some models can do is
declared by class attributes (as simonw/llm's ``Model.supports_*``), not guessed with ``hasattr``:

``can_sample``
    :meth:`LLM.sample`: k completions that share one prompt evaluation (self-consistency, best-of-N).
``can_score``
    :meth:`LLM.score`: the log-probability of given continuations as the whole answer (quote mode,
    verifiers that judge by likelihood).
``can_use_tools``
    :meth:`LLM.sample` takes ``tools`` (:mod:`dca.tools`) and answers their calls inside each sample.
    (:meth:`LLM.generate` needs no flag: :func:`dca.llm.tools.generate_with_tools` drives any model's.)

A class that subclasses :class:`LLM` inherits the defaults (no capability; ``reset`` and ``close`` do nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Completion:
    """One sampled continuation (:meth:`LLM.sample`).

    Attributes:
        text: the decoded text, without the stop string that ended it.
        tokens: number of tokens generated.
        mean_logprob: mean natural-log probability of the generated tokens under the model (temperature 1),
            the confidence used by weighted voting; 0.0 when no token was generated.
        finish: ``"stop"`` (end of generation or a stop string), ``"length"`` (max_tokens) or ``"cancelled"``.
        tool_calls: the tool calls made while sampling it (:class:`dca.tools.ToolCall`), in order.
        eos: the model ended it itself (an end-of-generation token), not a stop string or a limit.
    """

    text: str
    tokens: int
    mean_logprob: float
    finish: str
    tool_calls: tuple = ()
    eos: bool = False


REQUIRED_METHODS = ("render", "count_tokens", "generate", "reset", "close")


def check_llm(model):
    """``model`` when it has every method dca calls (:data:`REQUIRED_METHODS`), for objects that implement the
    protocol by shape rather than by subclassing :class:`LLM` (which provides ``reset`` and ``close``).

    Raises:
        ConfigError: a method is missing (the message names them).
    """
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(model, m, None))]
    if missing:
        from ..errors import ConfigError

        raise ConfigError(f"model {type(model).__name__} is not a dca.llm.LLM: it has no {', '.join(missing)}; "
                          "subclass dca.llm.LLM, which provides reset and close")
    return model


@runtime_checkable
class LLM(Protocol):
    """A chat model.

    Attributes:
        name: shown in stats and ``dca models``.
        context_length: the context window in tokens.
        think_tags: the model's own reasoning delimiters, e.g. ``("<think>", "</think>")``, or None when
            the model has none (dca then uses a step-by-step scaffold).
        can_sample: :meth:`sample` is implemented.
        can_score: :meth:`score` is implemented.
        can_use_tools: :meth:`sample` takes ``tools``.
    """

    name: str
    context_length: int
    think_tags: tuple[str, str] | None = None
    can_sample: ClassVar[bool] = False
    can_score: ClassVar[bool] = False
    can_use_tools: ClassVar[bool] = False

    def render(self, messages: Sequence[dict]) -> str:
        """Render ``[{"role", "content"}, ...]`` with the model's chat template, ending in an open assistant turn."""
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` (special tokens parsed, no BOS added)."""
        ...

    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] = (),
        repeat_penalty: float = 1.0,
        cancel: Callable[[], bool] | None = None,
    ) -> Iterator[str]:
        """Continue ``prompt``, yielding text pieces as they are decoded.

        Stops at end of generation, at the first of ``stop`` (not yielded), after ``max_tokens`` tokens,
        or as soon as ``cancel()`` returns True. ``temperature=0`` is greedy decoding; ``repeat_penalty``
        > 1 divides the logits of recently generated tokens (CTRL, Keskar et al. 2019), 1.0 is off.
        """
        ...

    def sample(self, prompt: str, *, n: int, max_tokens: int, temperature: float = 0.7, repeat_penalty: float = 1.0,
               stop: Sequence[str] = (), seed: int = 0, cancel: Callable[[], bool] | None = None,
               **kwargs) -> list[Completion]:
        """Sample ``n`` completions of ``prompt`` that share one prompt evaluation (``can_sample``);
        ``repeat_penalty`` as in :meth:`generate`; ``tools=`` (a sequence of :class:`dca.tools.Tool`) only
        when ``can_use_tools``.

        Raises:
            NotImplementedError: the model cannot (``can_sample`` is False).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot sample in parallel (can_sample is False)")

    def score(self, prompt: str, continuations: Sequence[str], *,
              cancel: Callable[[], bool] | None = None) -> tuple[np.ndarray, int]:
        """Log-probability of each continuation as the whole answer after ``prompt``, end of turn included
        (``can_score``).

        Returns:
            (float64 array of shape (len(continuations),), natural log, -inf where cancelled; tokens decoded).

        Raises:
            NotImplementedError: the model cannot (``can_score`` is False).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot score continuations (can_score is False)")

    def score_many(self, prompts: Sequence[str], continuations: Sequence[str], *,
                   cancel: Callable[[], bool] | None = None) -> tuple[np.ndarray, int]:
        """:meth:`score` for each of ``prompts`` (``can_score``): an array of shape (len(prompts),
        len(continuations)) and the tokens decoded. This default calls :meth:`score` prompt by prompt; a model
        may share the prompts' common prefix instead (:class:`~dca.llm.LlamaCppLLM` does)."""
        import numpy as np

        out = np.full((len(prompts), len(continuations)), -np.inf)
        decoded = 0
        for i, p in enumerate(prompts):
            if cancel is not None and cancel():
                break
            out[i], n = self.score(p, continuations, cancel=cancel)
            decoded += n + self.count_tokens(p)  # score() counts the continuations' tokens only
        return out, decoded

    def reset(self) -> None:
        """Forget evaluated tokens (a cached prompt prefix), so the next output does not depend on earlier calls;
        a model without such a cache does nothing."""

    def close(self) -> None:
        """Free the model's memory now rather than at garbage collection; a model holding none does nothing."""
