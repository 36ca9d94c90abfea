"""The one module that reaches past llama-cpp-python's ``Llama`` class: its low-level C bindings and private
attributes (``llama._model``, ``llama_cpp._internals``, ``llama_cpp._logger``). An upgrade of llama-cpp-python
that moves them has this file to mend and no other.

What is here: a :class:`SequenceContext` (a second llama.cpp context on a loaded model's weights, decoding
several sequences per batch with shared prompt cells, as llama.cpp's ``parallel`` and ``batched`` examples
do), the model facts the ``Llama`` class does not expose (:func:`n_ctx_train`, :func:`adds_bos`), and the
quantizer (:func:`quantize_model`, llama.cpp's ``llama_model_quantize`` with its log sent to :mod:`logging`).
"""

from __future__ import annotations

import ctypes
import logging
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import missing

log = logging.getLogger(__name__)


def import_llama_cpp():
    """``llama_cpp``, or :class:`~dca.errors.MissingDependencyError` with the install hint."""
    try:
        import llama_cpp
    except ImportError as e:
        raise missing("llama_cpp (llama-cpp-python)", "chat") from e
    return llama_cpp


def n_ctx_train(llama) -> int:
    """The context length the model was trained with (tokens), from a loaded ``llama_cpp.Llama``."""
    return llama._model.n_ctx_train()


def adds_bos(llama) -> bool:
    """Whether llama.cpp prepends the BOS token itself when tokenizing for this model."""
    return bool(llama._model.add_bos_token())


class SequenceContext:
    """A fresh llama.cpp context on the weights of a loaded ``llama_cpp.Llama``, for decoding several
    sequences in one batch.

    The context copies the ``Llama``'s own settings (threads, attention kernel, KV cache types), so a
    sequence decoded here gives the logits the ``Llama`` itself would.

    Args:
        llama: the loaded model (its own context is untouched).
        n_ctx: KV cells in all (tokens over all sequences).
        n_batch: most tokens decoded per batch (also the micro-batch size).
        n_seq: sequences, ids 0..n_seq-1.
        unified_kv: one KV stream shared by all sequences (prompt cells stored once) instead of one stream
            per sequence (each token attends over its own sequence's cells only: cheaper decode steps).

    Raises:
        RuntimeError: llama.cpp failed to allocate the context.
    """

    def __init__(self, llama, *, n_ctx: int, n_batch: int, n_seq: int, unified_kv: bool):
        import llama_cpp
        from llama_cpp import _internals

        self._lib = llama_cpp
        params = llama_cpp.llama_context_params.from_buffer_copy(llama.context_params)
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.kv_unified = unified_kv
        self.n_batch = n_batch
        self.n_vocab = llama.n_vocab()
        self._vocab = llama._model.vocab
        self._ctx = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
        adapter = getattr(llama, "_lora_adapter", None)
        if adapter is not None:  # the LoRA adapter the Llama applies (lora_path), on this context too
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(llama.lora_scale)
            if llama_cpp.llama_set_adapters_lora(self._ctx.ctx, adapters, 1, scales):
                self._ctx.close()
                raise RuntimeError(f"llama.cpp could not set the LoRA adapter {llama.lora_path} on a new context")
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, n_seq)
        self._memory = llama_cpp.llama_get_memory(self._ctx.ctx)
        self._n_outputs = 0  # rows with logits in the last decode()

    def close(self) -> None:
        """Free the batch and the context."""
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
            self._ctx.close()

    def __enter__(self) -> SequenceContext:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def n_tokens(self) -> int:
        """Tokens in the last decoded batch."""
        return self._batch.n_tokens

    def _run(self) -> None:
        rc = self._lib.llama_decode(self._ctx.ctx, self._batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} (context full or out of memory)")

    def decode_prompt(self, tokens: Sequence[int], seq_ids: Sequence[int]) -> None:
        """Decode ``tokens`` at positions 0.. in ``n_batch`` chunks, each token in every sequence of ``seq_ids``
        (shared KV cells); logits are kept for the last token only (:meth:`last_logits`)."""
        batch = self._batch
        for start in range(0, len(tokens), self.n_batch):
            part = tokens[start:start + self.n_batch]
            batch.n_tokens = len(part)
            for i, tok in enumerate(part):
                batch.token[i] = tok
                batch.pos[i] = start + i
                batch.n_seq_id[i] = len(seq_ids)
                for j, s in enumerate(seq_ids):
                    batch.seq_id[i][j] = s
                batch.logits[i] = start + i == len(tokens) - 1
            self._run()

    def decode(self, tokens: Sequence[int], positions: Sequence[int], seq_ids: Sequence[int],
               outputs: Sequence[bool] | None = None) -> None:
        """Decode one batch: token ``tokens[i]`` at ``positions[i]`` of sequence ``seq_ids[i]``, with logits
        for every row, or for the rows where ``outputs[i]`` is True (:meth:`logits`, rows in this order)."""
        self.decode_shared(tokens, positions, [(s,) for s in seq_ids],
                           [True] * len(tokens) if outputs is None else outputs)

    def decode_shared(self, tokens: Sequence[int], positions: Sequence[int], seq_sets: Sequence[Sequence[int]],
                      outputs: Sequence[bool]) -> None:
        """Decode one batch whose token ``tokens[i]`` sits at ``positions[i]`` of every sequence in ``seq_sets[i]``
        (one KV cell shared by them, in a unified cache; :meth:`decode` is the case of one sequence each); logits
        for the rows where ``outputs[i]`` (:meth:`logits`)."""
        batch = self._batch
        batch.n_tokens = len(tokens)
        self._n_outputs = 0
        for i, (tok, pos, seqs) in enumerate(zip(tokens, positions, seq_sets)):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = len(seqs)
            for j, seq in enumerate(seqs):
                batch.seq_id[i][j] = seq
            batch.logits[i] = bool(outputs[i])
            self._n_outputs += bool(outputs[i])
        self._run()

    def last_logits(self) -> np.ndarray:
        """The logits of the last token of the last batch: a float32 view of shape (n_vocab,), valid until the
        next decode."""
        row = self._lib.llama_get_logits_ith(self._ctx.ctx, self._batch.n_tokens - 1)
        return np.ctypeslib.as_array(row, shape=(self.n_vocab,))

    def logits(self) -> np.ndarray:
        """The logits of the rows of the last :meth:`decode` that asked for them: a float32 view of shape
        (rows, n_vocab), in batch order, valid until the next decode."""
        return np.ctypeslib.as_array(self._lib.llama_get_logits(self._ctx.ctx), shape=(self._n_outputs,
                                                                                       self.n_vocab))

    def copy_sequence(self, src: int, dst: int) -> None:
        """Make sequence ``dst`` share every cell of sequence ``src`` (a prompt decoded once)."""
        self._lib.llama_memory_seq_cp(self._memory, src, dst, -1, -1)

    def truncate_sequence(self, seq: int, start: int) -> None:
        """Drop the cells of sequence ``seq`` from position ``start`` on."""
        self._lib.llama_memory_seq_rm(self._memory, seq, start, -1)

    def is_end_of_generation(self, token: int) -> bool:
        """Whether ``token`` ends generation (EOS, end of turn...)."""
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))


_LOG_CALLBACK = None  # kept referenced while llama.cpp holds the C function pointer
_LOG_ERRORS: deque[str] = deque(maxlen=64)  # llama.cpp's last error lines (read after quantize_model)
GGML_LOG_LEVEL_ERROR = 4  # ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5


def _log_callback():
    """A llama.cpp log callback sending its lines to :mod:`logging` at DEBUG, and errors to ``_LOG_ERRORS``."""
    global _LOG_CALLBACK
    import llama_cpp

    if _LOG_CALLBACK is None:
        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data) -> None:
            try:
                line = text.decode("utf-8", errors="replace").rstrip()
                if level == GGML_LOG_LEVEL_ERROR:
                    _LOG_ERRORS.append(line)
                if line:
                    log.debug("llama.cpp: %s", line)
            except Exception:  # noqa: BLE001 - an exception must not cross back into C
                pass

        _LOG_CALLBACK = callback
        import atexit

        atexit.register(_unroute_at_exit)
    return _LOG_CALLBACK


def _unroute_at_exit() -> None:
    """Hand llama.cpp's log back to llama-cpp-python's own callback, silenced, before the interpreter tears its
    modules down: models freed during the teardown still log, and dca's callback (a module global) may be gone by
    then, which would leave llama.cpp calling freed memory."""
    try:
        import llama_cpp
        from llama_cpp import _logger

        _logger.logger.setLevel(logging.CRITICAL + 1)
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    except Exception:  # noqa: BLE001 - at exit, nothing to report to
        pass


def route_llama_cpp_log() -> None:
    """Send llama.cpp's log to :mod:`logging` (this module's logger, DEBUG) instead of stderr, for good.

    llama-cpp-python's own callback prints every line at or above its logger's level, and maps ggml's levels from an
    older enum (WARN is taken for ERROR), so with ``verbose=False`` warnings such as "using full-size SWA cache" still
    reach the terminal. ``dca --verbose`` shows the lines through logging.
    """
    llama_cpp = import_llama_cpp()
    llama_cpp.llama_log_set(_log_callback(), ctypes.c_void_p(0))


def quantize_model(src: Path, dst: Path, ftype: int, *, threads: int | None = None,
                   token_embedding_type: int | None = None, output_tensor_type: int | None = None) -> list[str]:
    """Run llama.cpp's quantizer (``llama_model_quantize``) from ``src`` to ``dst``.

    Args:
        ftype: the ``LLAMA_FTYPE_*`` value of the target type.
        threads: quantizer threads; None uses one per hardware thread.
        token_embedding_type, output_tensor_type: ``GGML_TYPE_*`` values overriding llama.cpp's choice for
            ``token_embd.weight`` and ``output.weight``, or None.

    Returns:
        llama.cpp's error lines when it failed (the quantizer's log goes to :mod:`logging` at DEBUG meanwhile,
        not to stderr); an empty list on success.

    Raises:
        MissingDependencyError: llama-cpp-python is not installed.
        OSError: a C++ exception surfaced through ctypes (some builds).
    """
    llama_cpp = import_llama_cpp()
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or 0
    if token_embedding_type is not None:
        params.token_embedding_type = token_embedding_type
    if output_tensor_type is not None:
        params.output_tensor_type = output_tensor_type
    _LOG_ERRORS.clear()
    route_llama_cpp_log()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc == 0:
        return []
    return list(_LOG_ERRORS) or ["no message; check free disk space"]


def embed_sequences(llama, token_lists: Sequence[Sequence[int]]) -> np.ndarray:
    """Pooled embeddings of an embedding-mode ``Llama`` (``embedding=True``, a pooling model), one row per token list,
    several sequences decoded per batch (up to ``n_batch`` tokens and ``n_seq_max`` sequences), as llama-cpp-python's
    ``Llama.embed`` does for strings but on token ids the caller has already truncated.

    Returns:
        float32 array of shape ``(len(token_lists), n_embd)``, not normalized.

    Raises:
        ValueError: a token list is longer than ``n_batch`` (a non-causal model needs a sequence in one batch).
    """
    import llama_cpp

    n_embd = llama.n_embd()
    n_batch = llama.n_batch
    n_seq_max = llama.context_params.n_seq_max
    out = np.empty((len(token_lists), n_embd), dtype=np.float32)
    batch = llama._batch
    i = 0
    while i < len(token_lists):
        batch.reset()
        members: list[int] = []
        used = 0
        while i < len(token_lists) and len(members) < n_seq_max and used + len(token_lists[i]) <= n_batch:
            batch.add_sequence(list(token_lists[i]), len(members), True)
            used += len(token_lists[i])
            members.append(i)
            i += 1
        if not members:
            raise ValueError(f"a text of {len(token_lists[i])} tokens exceeds the batch of {n_batch} tokens")
        llama._ctx.kv_cache_clear()
        llama._ctx.decode(batch)
        for seq, index in enumerate(members):
            ptr = llama_cpp.llama_get_embeddings_seq(llama._ctx.ctx, seq)
            out[index] = np.ctypeslib.as_array(ptr, shape=(n_embd,))
    batch.reset()
    return out


def save_state(llama) -> bytes:
    """The llama.cpp state of ``llama``'s context (its KV cache and last logits), as
    ``llama_state_get_data`` writes it; :func:`load_state` restores it (:mod:`dca.llm.prompt_cache`)."""
    llama_cpp = import_llama_cpp()
    size = llama_cpp.llama_state_get_size(llama._ctx.ctx)
    buf = (ctypes.c_uint8 * size)()
    n = llama_cpp.llama_state_get_data(llama._ctx.ctx, buf, size)
    return ctypes.string_at(buf, n)


def load_state(llama, data: bytes, tokens: Sequence[int]) -> None:
    """Restore a :func:`save_state` state made after evaluating ``tokens`` into ``llama``'s context, so that its
    next completion evaluates only what follows them.

    Raises:
        ValueError: llama.cpp refused the state (made by another model, context size or build).
    """
    llama_cpp = import_llama_cpp()
    buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    if llama_cpp.llama_state_set_data(llama._ctx.ctx, buf, len(data)) != len(data):
        raise ValueError("llama.cpp refused the state (another model, context size or llama.cpp build)")
    llama.input_ids[:len(tokens)] = tokens
    llama.n_tokens = len(tokens)
