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


GROUP_SEQUENCES = 64  # sequences (prompt x continuation) decoded in one context


def score_prompts(llama, prompts: Sequence[str], continuations: Sequence[str], end_token: int, *,
                  cancel: Callable[[], bool] | None = None) -> tuple[np.ndarray, int]:
    """Log-probability of each of ``continuations`` as the whole continuation of each of ``prompts``, ended by
    ``end_token``: what :func:`score_continuations` gives prompt by prompt, in one context per group of prompts.

    The prompts' longest common token prefix (a verifier's template and question, before each solution) is decoded
    once, shared by every sequence; each prompt's rest once, shared by its continuations' sequences; then each
    continuation in its own sequence. Scoring k solutions of one question so decodes the question once, not k times
    (8 GSM8K solutions with a verifier prompt on the bundled model: 1.1 s against 6.9 s prompt by prompt).

    A prompt's scores do not depend on the order of the prompts, nor on the others beyond the length of the prefix
    they all share (each phase, prefix, a prompt's own tokens, its continuations, is decoded in batches of its own:
    the prompts' tokens decoded in one shared batch moved a score by 0.4 nats with the company it kept). More
    continuations than ``GROUP_SEQUENCES`` are scored prompt by prompt (:func:`score_continuations`). ``cancel``
    is polled between groups of prompts. They differ from :func:`score_continuations`' as any other batch
    split does: llama.cpp's quantized kernels depend on the batch, and on the bundled Q4_1 model a token's
    log-probability moved by up to 0.26 nats between one split and another (a prompt decoded in batches of 32
    instead of 512); here up to 0.31.

    Returns:
        (float64 array of shape (len(prompts), len(continuations)), natural log, -inf where cancelled; tokens
        decoded, prompt tokens included).

    Raises:
        ValueError: a prompt is longer than the model's training context.
        RuntimeError: llama.cpp failed to allocate the context or to decode.
    """
    prompt_tokens = [llama.tokenize(p.encode("utf-8"), add_bos=True, special=True) for p in prompts]
    encoded = [llama.tokenize(c.encode("utf-8"), add_bos=False, special=False) + [end_token] for c in continuations]
    m = len(encoded)
    out = np.full((len(prompts), m), -np.inf)
    if not prompts or not m:
        return out, 0
    longest = max(len(e) for e in encoded)
    if max(len(t) for t in prompt_tokens) + longest > n_ctx_train(llama):
        raise ValueError("a prompt exceeds the model's context")
    decoded = 0
    if m > GROUP_SEQUENCES:  # more sequences than one context should hold: prompt by prompt
        for i, p in enumerate(prompts):
            if cancel is not None and cancel():
                break
            out[i], n = score_continuations(llama, p, continuations, end_token, cancel=cancel)
            decoded += n + len(prompt_tokens[i])
        return out, decoded
    per_group = max(1, GROUP_SEQUENCES // m)
    for lo in range(0, len(prompts), per_group):
        if cancel is not None and cancel():
            break
        group = prompt_tokens[lo:lo + per_group]
        decoded += _score_group(llama, group, encoded, out[lo:lo + per_group])
    return out, decoded


def _score_group(llama, group: list[list[int]], encoded: list[list[int]], out: np.ndarray) -> int:
    m = len(encoded)
    common = 0  # shared prefix, leaving every prompt at least one token of its own (its last gives the logits)
    limit = min(len(t) for t in group) - 1
    while common < limit and all(t[common] == group[0][common] for t in group):
        common += 1
    # Phases, each decoded in batches of its own, so that every token attends only to cells earlier batches wrote:
    # the shared prefix; then each prompt's own tokens; then each prompt's continuations. Entries are (token,
    # position, sequences, tag), the tag naming the log-probabilities its row's logits give.
    every = [i * m + j for i in range(len(group)) for j in range(m)]
    phases = [[(tok, pos, every, None) for pos, tok in enumerate(group[0][:common])]]
    for i, toks in enumerate(group):
        seqs = [i * m + j for j in range(m)]
        phases.append([(toks[pos], pos, seqs, ("first", i) if pos == len(toks) - 1 else None)
                       for pos in range(common, len(toks))])
    for i, toks in enumerate(group):
        phases.append([(tok, len(toks) + t, [i * m + j], ("next", i, j, t + 1))
                       for j, enc in enumerate(encoded) for t, tok in enumerate(enc[:-1])])  # end token: scored only
    total = sum(len(p) for p in phases)
    n_batch = 512
    with SequenceContext(llama, n_ctx=-(-(total + 8) // 256) * 256, n_batch=n_batch, n_seq=len(every),
                         unified_kv=True) as ctx:
        out[:] = 0.0
        for phase in phases:
            for lo in range(0, len(phase), n_batch):
                part = phase[lo:lo + n_batch]
                ctx.decode_shared([e[0] for e in part], [e[1] for e in part], [e[2] for e in part],
                                  [e[3] is not None for e in part])
                tagged = [e[3] for e in part if e[3] is not None]
                if not tagged:
                    continue
                logits = ctx.logits()
                lse = _logsumexp_rows(logits)
                for row, tag in enumerate(tagged):
                    if tag[0] == "first":  # the first token of every continuation after prompt tag[1]
                        for j, enc in enumerate(encoded):
                            out[tag[1], j] += float(logits[row, enc[0]] - lse[row])
                    else:
                        _, i, j, t = tag
                        out[i, j] += float(logits[row, encoded[j][t]] - lse[row])
    return total
