"""What the assistant returns: :class:`Answer` (from ``ask``) and :class:`StreamChunk` items (from ``stream``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .citations import Source

if TYPE_CHECKING:
    from ..voting import Vote

ChunkKind = Literal["sources", "thinking", "answer", "done"]


@dataclass(frozen=True)
class Stats:
    """Timing (seconds) and token counts of one answer.

    ``first_token_s`` runs from the call to the first generated piece (retrieval and prompt evaluation
    included); ``tokens_per_s`` is the decode rate after it, thinking and answer tokens together. With
    k > 1 samples, ``thinking_tokens``/``answer_tokens`` are the chosen sample's, ``generated_tokens`` the
    total over all ``samples``, and ``tokens_per_s`` that total over the sampling time. In quote mode
    ``generated_tokens`` counts the candidate-span tokens decoded to score them, over the scoring time.
    """

    retrieval_s: float = 0.0
    first_token_s: float = 0.0
    total_s: float = 0.0
    prompt_tokens: int = 0
    thinking_tokens: int = 0
    answer_tokens: int = 0
    tokens_per_s: float = 0.0
    samples: int = 1
    generated_tokens: int = 0


@dataclass(frozen=True)
class Sample:
    """One of k sampled answers (self-consistency).

    Attributes:
        text: the answer part, after any thinking.
        thinking: the thinking part ("" when none).
        answer: the final answer extracted by :func:`dca.grading.extract_answer`, or None.
        mean_logprob: mean natural-log token probability of the whole completion.
        tokens: tokens generated.
        finish: ``"stop"``, ``"length"`` (cut at the token limit) or ``"cancelled"``.
        tool_calls: the tool calls made in this sample (:class:`dca.tools.ToolCall`).
        score: the verifier's score, P(Yes) in [0, 1] (:mod:`dca.assistant.verifier`); None when not scored.
    """

    text: str
    thinking: str
    answer: str | None
    mean_logprob: float
    tokens: int
    finish: str = "stop"
    tool_calls: tuple = ()
    score: float | None = None


@dataclass(frozen=True)
class Answer:
    """The result of :meth:`~dca.assistant.Assistant.ask`.

    Attributes:
        question: the user's message.
        text: the answer, with citation markers ``[n]``.
        thinking: the thinking text ("" when the thinking phase was off).
        sources: the passages given to the model, numbered; ``cited`` marks those the answer cites.
        stats: timing and token counts.
        cancelled: generation stopped through the cancel hook.
        samples: the k sampled answers when k > 1, else empty.
        votes: the vote over ``samples`` (:class:`dca.voting.Vote`), best first; ``text`` is a sample of
            ``votes[0]``.
        strategy: the name of the test-time strategy that produced it.
        truncated: the answer was cut at ``max_tokens`` (or its sample at the sampling limit): it may end
            mid-sentence.
        tool_calls: the tool calls made while thinking and answering (:class:`dca.tools.ToolCall`; with k > 1,
            the chosen sample's); the replies are in ``text``/``thinking`` as the tool wrote them.
        chosen: the index in ``samples`` of the sample ``text`` comes from; None without samples.
    """

    question: str
    text: str
    thinking: str
    sources: tuple[Source, ...]
    stats: Stats
    cancelled: bool = False
    samples: tuple[Sample, ...] = ()
    votes: tuple[Vote, ...] = ()
    strategy: str = ""
    truncated: bool = False
    tool_calls: tuple = ()
    chosen: int | None = None

    @property
    def citations(self) -> tuple[Source, ...]:
        """The sources the answer cites."""
        return tuple(s for s in self.sources if s.cited)


@dataclass(frozen=True)
class StreamChunk:
    """One item of :meth:`~dca.assistant.Assistant.stream`: ``sources`` first, then ``thinking`` and ``answer``
    text pieces, then ``done`` carrying the final :class:`Answer` (with citations resolved)."""

    kind: ChunkKind
    text: str = ""
    sources: tuple[Source, ...] = ()
    answer: Answer | None = None
