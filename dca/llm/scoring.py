"""Scoring given continuations of a prompt: the log-probability the model gives each as its whole answer.

The ranking principle of multiple-choice scoring with language models (Brown et al. 2020; Holtzman et al.
2021, "Surface Form Competition"): each continuation is followed by the end-of-turn token, so the score is
the probability of that text as the complete answer, not as a prefix. Continuations are decoded in parallel
llama.cpp sequences that share one evaluation of the prompt. dca's quote mode
(:mod:`dca.assistant.strategies.quote`) ranks passage spans with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from .native import SequenceContext, n_ctx_train

log = logging.getLogger(__name__)

PARALLEL = 32  # continuations decoded per llama.cpp batch


def _logsumexp_rows(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1)
    return m + np.log(np.exp(x - m[:, None]).sum(axis=1))


def score_continuations(llama, prompt: str, continuations: Sequence[str], end_token: int, *,
                        parallel: int = PARALLEL,
                        cancel: Callable[[], bool] | None = None) -> tuple[np.ndarray, int]:
    """Log-probability of each of ``continuations`` as the whole continuation of ``prompt``, ended by ``end_token``.

    Args:
        llama: a loaded ``llama_cpp.Llama`` (its weights are shared; a separate context is made here).
        prompt: the rendered prompt (special tokens parsed).
        continuations: the texts to score.
        end_token: the token that ends the answer (the chat template's end of turn).
        parallel: continuations decoded per batch, each in its own sequence sharing the prompt's KV cells.
        cancel: polled before each batch; True leaves the remaining scores at -inf.

    Returns:
        (scores, float64 array of shape (len(continuations),), natural log, -inf where not scored; tokens
        decoded, the prompt not counted).

    Raises:
        ValueError: the prompt is longer than the model's training context.
        RuntimeError: llama.cpp failed to allocate the context or to decode.
    """
    tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    encoded = [llama.tokenize(s.encode("utf-8"), add_bos=False, special=False) + [end_token] for s in continuations]
    longest = max((len(e) for e in encoded), default=1)
    if len(tokens) + longest > n_ctx_train(llama):
        raise ValueError(f"prompt of {len(tokens)} tokens exceeds the model's context")
    n = max(1, min(parallel, len(continuations)))
    scores = np.full(len(continuations), -np.inf)
    decoded = 0
    n_ctx = -(-(len(tokens) + n * longest + 8) // 256) * 256
    # one unified KV stream: a single copy of the prompt's cells, shared by every sequence
    with SequenceContext(llama, n_ctx=n_ctx, n_batch=max(512, n * longest), n_seq=n, unified_kv=True) as ctx:
        ctx.decode_prompt(tokens, range(n))
        first = ctx.last_logits()[None, :].copy()
        first = first[0] - _logsumexp_rows(first)[0]  # log-probabilities of every first token
        for lo in range(0, len(continuations), n):
            if cancel is not None and cancel():
                break
            group = encoded[lo:lo + n]
            rows: list[list[int]] = []
            batch_tokens, positions, seqs = [], [], []
            for s, enc in enumerate(group):
                rows.append([])
                for j, tok in enumerate(enc[:-1]):  # the end token is scored, never decoded
                    rows[s].append(len(batch_tokens))
                    batch_tokens.append(tok)
                    positions.append(len(tokens) + j)
                    seqs.append(s)
            if batch_tokens:
                ctx.decode(batch_tokens, positions, seqs)
                logits = ctx.logits()
                lse = _logsumexp_rows(logits)  # only the scored entries are needed, not whole log-softmax rows
            decoded += len(batch_tokens)
            for s, enc in enumerate(group):
                total = float(first[enc[0]])
                for j in range(1, len(enc)):
                    row = rows[s][j - 1]
                    total += float(logits[row, enc[j]] - lse[row])
                scores[lo + s] = total
                ctx.truncate_sequence(s, len(tokens))
    return scores, decoded
