"""Parallel sampling of k completions that share one prompt evaluation (llama.cpp sequences).

The prompt is decoded once with every prompt token belonging to all k sequences, so its KV cells are shared
(llama.cpp's ``seq_id`` sets, as in its ``parallel`` and ``batched`` examples); each step then decodes one
token of every unfinished sequence in a single batch. On a CPU a batch of k tokens costs far less than k
single-token steps, so k samples cost much less than k separate calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .base import Completion
from .native import SequenceContext, n_ctx_train

if TYPE_CHECKING:
    from ..tools import Tool

log = logging.getLogger(__name__)

TOP_K = 64  # candidates kept before top-p; sampling from the long tail only adds noise
TAIL = 20.0  # nats below the best token (times the temperature) beyond which tokens are never sampled
PENALTY_LAST_N = 64  # generated tokens the repeat penalty looks back over (llama-cpp-python's last_n_tokens_size)
TOOL_RESERVE = 256  # KV cells per sequence kept for tool replies (the model's own tokens have max_tokens)


def apply_repeat_penalty(logits: np.ndarray, recent: Sequence[int], penalty: float) -> np.ndarray:
    """``logits`` (shape ``(n_vocab,)``) with every token of ``recent`` penalised once, as llama.cpp's penalties
    sampler does (the CTRL repetition penalty, Keskar et al. 2019): a positive logit is divided by ``penalty``, a
    negative one multiplied by it. Returns a new array; ``penalty`` 1.0 or no recent tokens return ``logits``."""
    if penalty == 1.0 or not recent:
        return logits
    ids = np.fromiter(set(recent), dtype=np.int64)
    out = np.array(logits, dtype=np.float32, copy=True)
    vals = out[ids]
    out[ids] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def sample_parallel(llama, prompt: str, *, n: int, max_tokens: int, temperature: float = 0.7, top_p: float = 0.95,
                    repeat_penalty: float = 1.0, stop: Sequence[str] = (), seed: int = 0,
                    cancel: Callable[[], bool] | None = None, tools: Sequence[Tool] = ()) -> list[Completion]:
    """Sample ``n`` completions of ``prompt`` in parallel sequences of a fresh llama.cpp context.

    Args:
        llama: a loaded ``llama_cpp.Llama`` (its model weights are shared, its own context is untouched).
        prompt: the rendered prompt (special tokens parsed).
        n: number of samples, 1..64.
        max_tokens: most tokens per sample.
        temperature: softmax temperature; 0 is greedy (then all samples are identical).
        top_p: nucleus sampling mass (Holtzman et al. 2020) within the top ``TOP_K`` tokens; 1.0 is off.
        repeat_penalty: > 1 discourages the tokens among each sample's last ``PENALTY_LAST_N`` generated ones
            (:func:`apply_repeat_penalty`), as ``Llama.generate(repeat_penalty=...)`` does; 1.0 is off. With
            ``temperature=0`` the samples then equal that greedy output for n <= 3; from n = 4 on, llama.cpp
            decodes the batch with other matrix kernels whose rounding differs (measured: ~0.003 nats in a
            token's log-probability on a Q4_K_M model), so a near-tie can go the other way after a few tokens.
        stop: strings that end a sample (not included in its text).
        seed: seed of the sampling RNG (numpy PCG64), so runs are reproducible.
        cancel: polled every step; True ends all samples with ``finish="cancelled"``.
        tools: tools that watch each sample (:mod:`dca.tools`): when one finds a complete call in a sample's
            text, the text after the call in that token is dropped, the tool's reply is decoded into that
            sequence in the next batch (several tokens of one sequence, logits from the last), and sampling
            goes on from there. Replies do not count against ``max_tokens``; each sequence has
            ``TOOL_RESERVE`` extra cells for them, and calls beyond those are left to the model.

    Returns:
        ``n`` :class:`Completion` objects, in sequence order, each with the tool calls of its sample.

    Raises:
        ValueError: n out of range, or the prompt does not fit the model's training context.
        RuntimeError: llama.cpp failed to allocate the context or to decode.
    """
    if not 1 <= n <= 64:
        raise ValueError(f"n must be in 1..64, got {n}")
    from ..tools import ToolRunner

    tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    if len(tokens) + max_tokens > n_ctx_train(llama):
        raise ValueError(f"prompt of {len(tokens)} tokens + {max_tokens} new ones exceeds the model's context")
    # cells for tool replies, never past the model's training context
    reserve = min(TOOL_RESERVE, n_ctx_train(llama) - len(tokens) - max_tokens) if tools else 0
    per_seq = -(-(len(tokens) + max_tokens + reserve + 8) // 256) * 256  # llama.cpp pads each stream to 256 cells
    n_ctx = n * per_seq
    rng = np.random.default_rng(seed)
    # One KV stream per sequence: each token attends over its own sequence's cells only, not over a
    # unified cache holding all n sequences (that made a step cost ~n single steps on a CPU).
    runners = [ToolRunner(tools) for _ in range(n)]
    n_batch = max(min(512, n_ctx), n * (1 + (MAX_REPLY_TOKENS if tools else 0)))
    with SequenceContext(llama, n_ctx=n_ctx, n_batch=n_batch, n_seq=n, unified_kv=False) as ctx:
        n_vocab = ctx.n_vocab
        # 1. the prompt, in sequence 0; logits for the last token only
        ctx.decode_prompt(tokens, [0])
        for s in range(1, n):  # copy the prompt's KV cells from sequence 0 into every other stream
            ctx.copy_sequence(0, s)
        out_tokens: list[list[int]] = [[] for _ in range(n)]  # the tokens each sample chose
        recent: list[list[int]] = [[] for _ in range(n)]  # what each sequence holds after the prompt (tool replies too)
        feed: dict[int, list[int]] = {}  # the tokens each sequence decodes in the next batch
        next_pos = [len(tokens)] * n
        eos = [False] * n
        replied = [0] * n  # tool-reply tokens in each sequence
        logprob_sum = np.zeros(n)
        finish: list[str | None] = [None] * n
        raw = [b""] * n  # generated bytes (a token may end inside a UTF-8 character)
        tail_bytes = 4 * max((len(x) for x in stop), default=0) + 64
        logit_rows = {s: 0 for s in range(n)}  # batch row holding each sequence's next-token logits
        shared_last = True  # after the prompt, every sequence reads the same row
        for step in range(max_tokens):
            active = [s for s in range(n) if finish[s] is None]
            if not active:
                break
            if cancel is not None and cancel():
                for s in active:
                    finish[s] = "cancelled"
                break
            chosen = {}
            if shared_last:  # after the prompt every sequence continues from the same logits row
                mat = np.broadcast_to(ctx.last_logits(), (len(active), n_vocab))
            else:  # rows of the last batch, in batch order; every sequence still active was in it
                mat = ctx.logits()[[logit_rows[s] for s in active]]
            # log-probabilities for the confidence come from the model's own logits; choices from penalised ones
            top = mat.max(axis=1, keepdims=True)
            log_z = top[:, 0] + np.log(np.exp(mat - top).sum(axis=1))
            raw_mat = mat
            if repeat_penalty != 1.0:
                mat = np.stack([apply_repeat_penalty(mat[j], recent[s][-PENALTY_LAST_N:], repeat_penalty)
                                for j, s in enumerate(active)])
                top = mat.max(axis=1, keepdims=True)
            shifted = mat - top
            # Candidates: tokens within TAIL*temperature nats of the best (the rest have tempered
            # probability below e^-TAIL of it, far outside any top-p nucleus); a cheap O(vocab) compare
            # instead of a partition of the whole vocabulary at every step.
            near = shifted >= -TAIL * temperature if temperature > 0 else None
            for j, s in enumerate(active):
                logits = mat[j]
                if temperature <= 0:
                    tok = int(np.argmax(logits))
                else:
                    # top-k (k=TOP_K) then top-p over the tempered distribution
                    cand = np.flatnonzero(near[j])
                    if len(cand) > TOP_K:
                        cand = cand[np.argpartition(logits[cand], -TOP_K)[-TOP_K:]]
                    scaled = logits[cand].astype(np.float64) / temperature
                    probs = np.exp(scaled - scaled.max())
                    probs /= probs.sum()
                    order = np.argsort(-probs)
                    keep = order[: int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1]
                    tok = int(cand[rng.choice(keep, p=probs[keep] / probs[keep].sum())])
                chosen[s] = tok
                logprob_sum[s] += float(raw_mat[j, tok] - log_z[j])
                out_tokens[s].append(tok)
                if ctx.is_end_of_generation(tok):
                    finish[s] = "stop"
                    eos[s] = True
                    continue
                before = raw[s]
                raw[s] += llama.detokenize([tok])
                feed[s] = [tok]
                if runners[s] and replied[s] + MAX_REPLY_TOKENS <= reserve:
                    feed[s] = _tool_step(llama, runners[s], before, raw, s, tok)
                    replied[s] += len(feed[s]) - 1
                recent[s] += feed[s]
                if stop:
                    tail = raw[s][-tail_bytes:].decode("utf-8", errors="ignore")
                    if any(x in tail for x in stop):
                        finish[s] = "stop"
            # 2. one batch with the new token of every still-running sequence
            running = [s for s in active if finish[s] is None]
            if not running or step + 1 == max_tokens:
                break
            batch_tokens, batch_pos, batch_seq, wanted = [], [], [], []
            for i, s in enumerate(running):
                for j, tok in enumerate(feed[s]):
                    batch_tokens.append(tok)
                    batch_pos.append(next_pos[s])
                    batch_seq.append(s)
                    wanted.append(j == len(feed[s]) - 1)  # logits of a sequence's last token only
                    next_pos[s] += 1
                logit_rows[s] = i  # the next token follows the sequence's last one: output row i
            shared_last = False
            ctx.decode(batch_tokens, batch_pos, batch_seq, outputs=wanted)
        results = []
        for s in range(n):
            text = raw[s].decode("utf-8", errors="ignore")
            cut = min((text.find(x) for x in stop if x and x in text), default=-1)
            k = len(out_tokens[s])
            results.append(Completion(text[:cut] if cut >= 0 else text, k, float(logprob_sum[s] / k) if k else 0.0,
                                      finish[s] or "length", tuple(runners[s].calls), eos[s]))
        return results


MAX_REPLY_TOKENS = 32  # tokens of one tool reply (with what of the call's token is kept) decoded in one batch


def _tool_step(llama, runner, before: bytes, raw: list[bytes], s: int, tok: int) -> list[int]:
    """Let sequence ``s``'s tools see its text after token ``tok`` (``raw[s]``; ``before`` is the text before
    it). Returns the tokens the sequence decodes next: ``[tok]``, or, when a tool answered a call, the tokens
    of what ``tok`` wrote up to the end of the call followed by the reply (``raw[s]`` rewritten to match)."""
    text = raw[s].decode("utf-8", errors="surrogateescape")  # lossless: stray bytes map back to themselves
    hit = runner.step(text)
    if hit is None:
        return [tok]
    cut, insert = hit
    cut_bytes = len(text[:cut].encode("utf-8", errors="surrogateescape"))
    if cut_bytes < len(before):  # the call ended before this token: the KV cells already hold what followed
        runner.retract()
        return [tok]
    fed = llama.tokenize(raw[s][len(before):cut_bytes] + insert.encode("utf-8"), add_bos=False, special=False)
    fed = fed[:MAX_REPLY_TOKENS]
    raw[s] = before + llama.detokenize(fed)
    return fed

