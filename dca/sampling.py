"""Parallel sampling of k completions that share one prompt evaluation (llama.cpp sequences).

The prompt is decoded once with every prompt token belonging to all k sequences, so its KV cells are shared
(llama.cpp's ``seq_id`` sets, as in its ``parallel`` and ``batched`` examples); each step then decodes one
token of every unfinished sequence in a single batch. On a CPU a batch of k tokens costs far less than k
single-token steps, so k samples cost much less than k separate calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

TOP_K = 64  # candidates kept before top-p; sampling from the long tail only adds noise
TAIL = 20.0  # nats below the best token (times the temperature) beyond which tokens are never sampled
PENALTY_LAST_N = 64  # generated tokens the repeat penalty looks back over (llama-cpp-python's last_n_tokens_size)


@dataclass(frozen=True)
class Completion:
    """One sampled continuation.

    Attributes:
        text: the decoded text, without the stop string that ended it.
        tokens: number of tokens generated.
        mean_logprob: mean natural-log probability of the generated tokens under the model (temperature 1),
            the confidence used by weighted voting; 0.0 when no token was generated.
        finish: ``"stop"`` (end of generation or a stop string), ``"length"`` (max_tokens) or ``"cancelled"``.
    """

    text: str
    tokens: int
    mean_logprob: float
    finish: str


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def _decode(ctx, batch) -> None:
    import llama_cpp

    rc = llama_cpp.llama_decode(ctx.ctx, batch)
    if rc != 0:
        raise RuntimeError(f"llama_decode failed with code {rc} (context full or out of memory)")


def decode_prompt(ctx, batch, tokens: Sequence[int], n_batch: int, seq_ids: Sequence[int]) -> None:
    """Decode ``tokens`` at positions 0.. in ``n_batch`` chunks, each token in every sequence of ``seq_ids``
    (shared KV cells); logits are kept for the last token only."""
    for start in range(0, len(tokens), n_batch):
        part = tokens[start:start + n_batch]
        batch.n_tokens = len(part)
        for i, tok in enumerate(part):
            batch.token[i] = tok
            batch.pos[i] = start + i
            batch.n_seq_id[i] = len(seq_ids)
            for j, s in enumerate(seq_ids):
                batch.seq_id[i][j] = s
            batch.logits[i] = start + i == len(tokens) - 1
        _decode(ctx, batch)


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
                    cancel: Callable[[], bool] | None = None) -> list[Completion]:
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

    Returns:
        ``n`` :class:`Completion` objects, in sequence order.

    Raises:
        ValueError: n out of range, or the prompt does not fit the model's training context.
        RuntimeError: llama.cpp failed to allocate the context or to decode.
    """
    import llama_cpp
    from llama_cpp import _internals

    if not 1 <= n <= 64:
        raise ValueError(f"n must be in 1..64, got {n}")
    tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    per_seq = -(-(len(tokens) + max_tokens + 8) // 256) * 256  # llama.cpp pads each stream to 256 cells
    n_ctx = n * per_seq
    if len(tokens) + max_tokens > llama._model.n_ctx_train():
        raise ValueError(f"prompt of {len(tokens)} tokens + {max_tokens} new ones exceeds the model's context")
    # the Llama's own settings (threads, attention kernel, KV types), so greedy samples match its output
    params = llama_cpp.llama_context_params.from_buffer_copy(llama.context_params)
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = max(min(512, n_ctx), n)
    params.n_seq_max = n
    # One KV stream per sequence: each token attends over its own sequence's cells only, not over a
    # unified cache holding all n sequences (that made a step cost ~n single steps on a CPU).
    params.kv_unified = False
    ctx = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
    batch = llama_cpp.llama_batch_init(params.n_batch, 0, n)
    rng = np.random.default_rng(seed)
    vocab = llama._model.vocab
    n_vocab = llama.n_vocab()
    try:
        # 1. the prompt, every token in all n sequences; logits for the last one only
        decode_prompt(ctx, batch, tokens, params.n_batch, [0])
        memory = llama_cpp.llama_get_memory(ctx.ctx)
        for s in range(1, n):  # copy the prompt's KV cells from sequence 0 into every other stream
            llama_cpp.llama_memory_seq_cp(memory, 0, s, -1, -1)
        out_tokens: list[list[int]] = [[] for _ in range(n)]
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
                row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, batch.n_tokens - 1), shape=(n_vocab,))
                mat = np.broadcast_to(row, (len(active), n_vocab))
            else:  # rows of the last batch, in batch order; every sequence still active was in it
                allrows = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx.ctx), shape=(batch.n_tokens, n_vocab))
                mat = allrows[[logit_rows[s] for s in active]]
            # log-probabilities for the confidence come from the model's own logits; choices from penalised ones
            top = mat.max(axis=1, keepdims=True)
            log_z = top[:, 0] + np.log(np.exp(mat - top).sum(axis=1))
            raw_mat = mat
            if repeat_penalty != 1.0:
                mat = np.stack([apply_repeat_penalty(mat[j], out_tokens[s][-PENALTY_LAST_N:], repeat_penalty)
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
                if llama_cpp.llama_vocab_is_eog(vocab, tok):
                    finish[s] = "stop"
                    continue
                raw[s] += llama.detokenize([tok])
                if stop:
                    tail = raw[s][-tail_bytes:].decode("utf-8", errors="ignore")
                    if any(x in tail for x in stop):
                        finish[s] = "stop"
            # 2. one batch with the new token of every still-running sequence
            running = [s for s in active if finish[s] is None]
            if not running or step + 1 == max_tokens:
                break
            batch.n_tokens = len(running)
            for i, s in enumerate(running):
                batch.token[i] = chosen[s]
                batch.pos[i] = len(tokens) + len(out_tokens[s]) - 1
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = s
                batch.logits[i] = True
                logit_rows[s] = i
            shared_last = False
            _decode(ctx, batch)
        results = []
        for s in range(n):
            text = raw[s].decode("utf-8", errors="ignore")
            cut = min((text.find(x) for x in stop if x and x in text), default=-1)
            k = len(out_tokens[s])
            results.append(Completion(text[:cut] if cut >= 0 else text, k, float(logprob_sum[s] / k) if k else 0.0,
                                      finish[s] or "length"))
        return results
    finally:
        llama_cpp.llama_batch_free(batch)
        ctx.close()

