"""Quote mode: the answer is the span of the retrieved passages that the model finds most probable.

A small model given the right passage still writes names and numbers that are not in it. In quote mode it
does not write: every short span of the passages (word n-grams, see :func:`candidate_spans`) is scored as the
answer, by the model's log-probability of the span followed by the end of its turn, and the best span is the
answer, cited by its passage. This is extractive QA by a generative model's likelihood, the ranking
principle of multiple-choice scoring with LMs (Brown et al. 2020; Holtzman et al. 2021, "Surface Form
Competition") applied to candidate spans, as extractive readers do with start/end scores (Rajpurkar et al.
2016, SQuAD). The end-of-turn term makes the score a full-answer probability: a span that stops mid-phrase
is unlikely to be followed by the end of the answer.

Candidates are scored in parallel llama.cpp sequences that share one evaluation of the prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

MAX_WORDS = 4  # longest candidate span, in words
MAX_CANDIDATES = 384  # candidates scored per question, in passage order
_PARALLEL = 32  # candidates decoded per llama.cpp batch
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
    from .rag.chunking import split_sentences

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


def _logsumexp_rows(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1)
    return m + np.log(np.exp(x - m[:, None]).sum(axis=1))


def score_spans(llama, prompt: str, spans: Sequence[str], end_token: int, *, parallel: int = _PARALLEL,
                cancel: Callable[[], bool] | None = None) -> tuple[np.ndarray, int]:
    """Log-probability of each of ``spans`` as the whole continuation of ``prompt``, ended by ``end_token``.

    Args:
        llama: a loaded ``llama_cpp.Llama`` (its weights are shared; a separate context is made here).
        prompt: the rendered prompt (special tokens parsed).
        spans: the continuations to score.
        end_token: the token that ends the answer (the chat template's end of turn).
        parallel: spans decoded per batch, each in its own sequence sharing the prompt's KV cells.

    Returns:
        (scores, shape (len(spans),), natural log; tokens decoded, the prompt not counted).

    Raises:
        ValueError: the prompt is longer than the model's training context.
        RuntimeError: llama.cpp failed to allocate the context or to decode.
    """
    import llama_cpp
    from llama_cpp import _internals

    from .sampling import _decode, decode_prompt

    tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    encoded = [llama.tokenize(s.encode("utf-8"), add_bos=False, special=False) + [end_token] for s in spans]
    longest = max((len(e) for e in encoded), default=1)
    if len(tokens) + longest > llama._model.n_ctx_train():
        raise ValueError(f"prompt of {len(tokens)} tokens exceeds the model's context")
    n = max(1, min(parallel, len(spans)))
    params = llama_cpp.llama_context_params.from_buffer_copy(llama.context_params)
    params.n_ctx = -(-(len(tokens) + n * longest + 8) // 256) * 256
    params.n_batch = params.n_ubatch = max(512, n * longest)
    params.n_seq_max = n
    params.kv_unified = True  # one copy of the prompt's cells, shared by every sequence
    ctx = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
    batch = llama_cpp.llama_batch_init(params.n_batch, 0, n)
    n_vocab = llama.n_vocab()
    scores = np.full(len(spans), -np.inf)
    decoded = 0
    try:
        decode_prompt(ctx, batch, tokens, params.n_batch, range(n))
        first = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(ctx.ctx, batch.n_tokens - 1), shape=(1, n_vocab)).copy()
        first = first[0] - _logsumexp_rows(first)[0]  # log-probabilities of every first token
        memory = llama_cpp.llama_get_memory(ctx.ctx)
        for lo in range(0, len(spans), n):
            if cancel is not None and cancel():
                break
            group = encoded[lo:lo + n]
            batch.n_tokens = sum(len(e) - 1 for e in group)  # the end token is scored, never decoded
            rows: list[list[int]] = []
            i = 0
            for s, enc in enumerate(group):
                rows.append([])
                for j, tok in enumerate(enc[:-1]):
                    batch.token[i] = tok
                    batch.pos[i] = len(tokens) + j
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = s
                    batch.logits[i] = True
                    rows[s].append(i)
                    i += 1
            if batch.n_tokens:
                _decode(ctx, batch)
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx.ctx), shape=(batch.n_tokens, n_vocab))
                lse = _logsumexp_rows(logits)  # only the scored entries are needed, not whole log-softmax rows
            decoded += batch.n_tokens
            for s, enc in enumerate(group):
                total = float(first[enc[0]])
                for j in range(1, len(enc)):
                    row = rows[s][j - 1]
                    total += float(logits[row, enc[j]] - lse[row])
                scores[lo + s] = total
                llama_cpp.llama_memory_seq_rm(memory, s, len(tokens), -1)
        return scores, decoded
    finally:
        llama_cpp.llama_batch_free(batch)
        ctx.close()


def generate_quote(llama, prompt: str, passages: Sequence[str], *, question: str = "", end_token: int,
                   cancel: Callable[[], bool] | None = None) -> Quote:
    """The span of ``passages`` (:func:`candidate_spans`) with the highest :func:`score_spans` score."""
    spans = candidate_spans(passages, question)
    if not spans:
        return Quote("", None, float("-inf"), 0, 0)
    scores, decoded = score_spans(llama, prompt, [s.text for s in spans], end_token, cancel=cancel)
    best = int(np.argmax(scores))
    return Quote(spans[best].text, spans[best].passage, float(scores[best]), len(spans), decoded)
