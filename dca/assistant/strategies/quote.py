"""Quote mode: the answer is the span of the retrieved passages that the model finds most probable.

A small model given the right passage still writes names and numbers that are not in it. In quote mode it
does not write: every short span of the passages (word n-grams, see :func:`candidate_spans`) is scored as the
answer by the model's log-probability of the span followed by the end of its turn
(:meth:`dca.llm.LLM.score`), and the best span is the answer, cited by its passage. This is extractive QA by a
generative model's likelihood, the ranking principle of multiple-choice scoring with LMs (Brown et al. 2020;
Holtzman et al. 2021, "Surface Form Competition") applied to candidate spans, as extractive readers do with
start/end scores (Rajpurkar et al. 2016, SQuAD). The end-of-turn term makes the score a full-answer
probability: a span that stops mid-phrase is unlikely to be followed by the end of the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError
from ...llm import capable
from ..types import StreamChunk
from . import Generation, Outcome, register_strategy
from .budget_forcing import BudgetForcing

MAX_WORDS = 4  # longest candidate span, in words
MAX_CANDIDATES = 384  # candidates scored per question, in passage order
# Words a span may not begin or end with: it would only add a word to a shorter candidate.
_EDGE_WORDS = frozenset(
    "a an the this that these those it its his her their there is are was were be been has have had in on at "
    "of to for by with from as and or but which who whom whose what when where why how".split()
)
_STRIP = "\"'“”‘’()[]{}.,;:!?"


@dataclass(frozen=True)
class Span:
    """A candidate answer: ``text``, a verbatim phrase of passage ``passage`` (an index into the passages)."""

    text: str
    passage: int


@dataclass(frozen=True)
class Quote:
    """The chosen span.

    Attributes:
        text: the span, verbatim from its passage ("" when there was no candidate).
        passage: index of its passage, or None.
        score: its log-probability (natural log) as the whole answer.
        candidates: number of spans scored.
        tokens: tokens decoded to score them (the prompt not counted).
    """

    text: str
    passage: int | None
    score: float
    candidates: int
    tokens: int


def _key(word: str) -> str:
    return word.strip(_STRIP).lower()


def candidate_spans(passages: Sequence[str], question: str = "", *, max_words: int = MAX_WORDS,
                    limit: int = MAX_CANDIDATES) -> list[Span]:
    """Word n-grams (1..``max_words`` words, within one sentence) of ``passages`` that could answer ``question``.

    Words are whitespace-separated; a span's outer punctuation is stripped (inner stays: "February 7, 2016").
    A span is kept when it neither begins nor ends with a function word, and holds at least one word (letters
    or digits) that is not in the question. Duplicates (case-insensitive) keep their first passage.

    Returns:
        at most ``limit`` spans, in passage order.
    """
    from ...rag.chunking import split_sentences

    asked = {_key(w) for w in question.split()}
    seen: set[str] = set()
    out: list[Span] = []
    for p, passage in enumerate(passages):
        for sentence in split_sentences(passage):
            words = sentence.split()
            for i in range(len(words)):
                for j in range(i + 1, min(i + max_words, len(words)) + 1):
                    first, last = _key(words[i]), _key(words[j - 1])
                    if not first or not last or first in _EDGE_WORDS or last in _EDGE_WORDS:
                        continue
                    if all(_key(w) in asked or not any(c.isalnum() for c in w) for w in words[i:j]):
                        continue
                    text = " ".join(words[i:j]).strip(_STRIP)
                    if not text or text.lower() in seen:
                        continue
                    seen.add(text.lower())
                    out.append(Span(text, p))
                    if len(out) >= limit:
                        return out
    return out


def choose_span(llm, prompt: str, passages: Sequence[str], *, question: str = "",
                cancel: Callable[[], bool] | None = None) -> Quote:
    """The span of ``passages`` (:func:`candidate_spans`) that ``llm`` scores highest as the whole answer to
    ``prompt`` (:meth:`dca.llm.LLM.score`)."""
    spans = candidate_spans(passages, question)
    if not spans:
        return Quote("", None, float("-inf"), 0, 0)
    scores, decoded = llm.score(prompt, [s.text for s in spans], cancel=cancel)
    best = int(np.argmax(scores))
    return Quote(spans[best].text, spans[best].passage, float(scores[best]), len(spans), decoded)


@register_strategy("quote")
class QuoteMode(BudgetForcing):
    """The thinking phase as in budget forcing, then the best-scoring passage span as the answer, cited; without
    passages the answer is generated freely."""

    def answer(self, gen: Generation, prompt: str) -> Generator[StreamChunk, None, Outcome]:
        if not gen.sources:
            return (yield from super().answer(gen, prompt))
        if not capable(gen.llm, "score"):
            raise ConfigError(f"--quote needs a model that can score spans (a GGUF); {gen.llm.name} cannot")
        quote = choose_span(gen.llm, prompt, [s.text for s in gen.sources], question=gen.question, cancel=gen.cancel)
        text = f"{quote.text} [{gen.sources[quote.passage].number}]" if quote.text else ""
        yield from gen.answer_piece(text)
        return Outcome(text=text, generated_tokens=quote.tokens or None, streamed=not quote.tokens)
