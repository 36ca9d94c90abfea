"""A prompt cache on disk: the llama.cpp state (KV cache) of a prompt prefix, kept between processes.

A one-shot ``dca chat`` starts a new process, so llama.cpp's own reuse of the previous prompt's KV cache (it keeps
the longest common prefix within one context) never applies, and each answer evaluates the whole prompt again,
its unchanging system turn included. This cache keeps, per model file, the state after the prefix that the last
two prompts shared (the system turn and what follows it alike, whatever the chat template), and restores it into
a fresh context whose prompt starts with it: the prompt cache of llama.cpp's ``llama-cli --prompt-cache`` and of
its server's ``cache_prompt``, found without being told where the prefix ends.

Files, under ``directory/MODEL_KEY/`` (``MODEL_KEY``: hash of the model's path, size, mtime and the context size):
``last.json`` the token ids of the last prompt seen; ``N-HASH.state`` the llama.cpp state after the first N tokens
of a prompt (``HASH``: of those ids). Writes are atomic; a file that cannot be read is removed and the prompt
evaluated as usual; at most :data:`MAX_ENTRIES` states are kept (least recently used first out).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..paths import atomic_path

log = logging.getLogger(__name__)

MAX_ENTRIES = 8
MIN_TOKENS = 32  # a shorter shared prefix costs less to evaluate than a state file to read


def _digest(tokens: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps(list(tokens)).encode()).hexdigest()[:24]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PromptCache:
    """The prompt-prefix states of one model in one context size.

    Args:
        directory: the cache's root directory (``$DCA_HOME/cache/prompts`` for ``dca chat`` and ``dca serve``).
        model_path: the GGUF file; its path, size and mtime key the states (another file, or the same path
            rewritten, never restores a state made by the old one).
        n_ctx: the context size (part of the key).
        max_entries: most states kept.
        min_tokens: the shortest prefix worth keeping.
        adapter: the LoRA adapter GGUF applied over the model, keyed likewise (states with and without it differ).
    """

    def __init__(self, directory: str | Path, model_path: str | Path, n_ctx: int, *, max_entries: int = MAX_ENTRIES,
                 min_tokens: int = MIN_TOKENS, adapter: str | Path | None = None):
        ident = []
        for path in (model_path, adapter):
            if path is not None:
                path = Path(path).resolve()
                st = path.stat()
                ident.append(f"{path}|{st.st_size}|{st.st_mtime_ns}")
        key = hashlib.sha256(f"{'|'.join(ident)}|{n_ctx}".encode()).hexdigest()[:16]
        self.dir = Path(directory).expanduser() / key
        self.max_entries, self.min_tokens = max_entries, min_tokens

    def _entries(self) -> list[tuple[int, str, Path]]:
        out = []
        for f in self.dir.glob("*.state"):
            n, _, digest = f.stem.partition("-")
            if n.isdigit() and digest:
                out.append((int(n), digest, f))
        return out

    def _prune(self) -> None:
        def mtime(entry) -> float:
            try:
                return entry[2].stat().st_mtime
            except OSError:  # removed by another process meanwhile
                return 0.0

        for _, _, old in sorted(self._entries(), key=mtime)[:-self.max_entries]:
            old.unlink(missing_ok=True)

    def restore(self, llama, tokens: Sequence[int]) -> int:
        """Load into ``llama`` (a ``llama_cpp.Llama`` with an empty context) the longest kept state whose prompt
        is a proper prefix of ``tokens``; return its length in tokens (0: none restored, the context untouched)."""
        if llama.n_tokens != 0:
            return 0
        from .native import load_state

        for n, digest, path in sorted(self._entries(), reverse=True):
            if n >= len(tokens) or _digest(tokens[:n]) != digest:
                continue
            try:
                load_state(llama, path.read_bytes(), tokens[:n])
            except (OSError, ValueError) as e:
                log.debug("prompt cache: dropping %s (%s)", path, e)
                llama.reset()
                path.unlink(missing_ok=True)
                continue
            try:
                os.utime(path)  # recently used
            except OSError:
                pass
            return n
        return 0

    def remember(self, llama, tokens: Sequence[int]) -> None:
        """Before ``tokens`` are evaluated in ``llama`` (whose context holds a prefix of them, perhaps empty): when
        they share a prefix of at least ``min_tokens`` with the last prompt and no state of it is kept, evaluate that
        prefix and keep its state; then record ``tokens`` as the last prompt. Failures to write are logged, never
        raised: the cache only saves time."""
        from .native import save_state

        last_file = self.dir / "last.json"
        try:
            last = json.loads(last_file.read_text()) if last_file.exists() else []
        except (OSError, ValueError):
            last = []
        n = min(_common_prefix(last, tokens), len(tokens) - 1)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            digest = _digest(tokens[:n])
            if n >= self.min_tokens and not any(e[:2] == (n, digest) for e in self._entries()):
                done = llama.n_tokens
                if done <= n and list(llama.input_ids[:done]) == list(tokens[:done]):
                    if done < n:
                        llama.eval(list(tokens[done:n]))
                    with atomic_path(self.dir / f"{n}-{digest}.state", sync=False) as tmp:
                        tmp.write_bytes(save_state(llama))
                    self._prune()
            with atomic_path(last_file, sync=False) as tmp:
                tmp.write_text(json.dumps(list(tokens)))
        except OSError as e:
            log.debug("prompt cache: not written (%s)", e)
