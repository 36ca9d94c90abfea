"""The prompt cache on disk (dca.llm.prompt_cache) on the bundled GGUF: a later process restores the state of the
prefix its prompt shares with earlier ones instead of evaluating it, and answers as without it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import bundled_gguf

from dca.llm.llamacpp import LlamaCppLLM
from dca.llm.prompt_cache import PromptCache

pytestmark = pytest.mark.slow

SYSTEM = ("You are a helpful assistant that runs offline. When the user's message contains numbered passages, answer "
          "from them and cite each passage you use by its number in square brackets, like [1].")


def prompt(llm, question: str) -> str:
    return llm.render([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])


def tokens(llm, text: str) -> list[int]:
    return llm.llama.tokenize(text.encode(), special=True)


@pytest.fixture(scope="module")
def path():
    return bundled_gguf()


def test_a_new_process_restores_the_shared_prefix_and_answers_the_same(tmp_path, path):
    cache = tmp_path / "prompts"
    first = LlamaCppLLM(path, n_ctx=1024, prompt_cache=cache)
    a, b, c = (prompt(first, q) for q in ("What is 2 + 3?", "Name a river in Europe.", "What colour is the sky?"))
    shared = len(tokens(first, SYSTEM)) + 2  # at least the system turn
    "".join(first.generate(a, max_tokens=2))
    (key_dir,) = cache.iterdir()
    assert json.loads((key_dir / "last.json").read_text()) == tokens(first, a)
    assert not list(key_dir.glob("*.state"))  # one prompt: nothing shared yet
    first.reset()
    "".join(first.generate(b, max_tokens=2))
    (state,) = key_dir.glob("*.state")
    n = int(state.stem.split("-")[0])
    ta, tb, tc = tokens(first, a), tokens(first, b), tokens(first, c)
    assert n >= shared and ta[:n] == tb[:n] and ta[n] != tb[n]  # the longest shared prefix
    first.close()

    # a fresh model (another process) restores those n tokens for a third prompt that starts with them
    second = LlamaCppLLM(path, n_ctx=1024, prompt_cache=cache)
    restored = PromptCache(cache, path, 1024).restore(second.llama, tc)
    assert restored == n and second.llama.n_tokens == n and tc[:n] == tb[:n]
    second.llama.eval(tc[n:])
    cached_logits = np.array(second.llama.scores[second.llama.n_tokens - 1])
    plain = LlamaCppLLM(path, n_ctx=1024)
    plain.llama.eval(tc)
    logits = np.array(plain.llama.scores[plain.llama.n_tokens - 1])
    assert np.abs(cached_logits - logits).max() < 0.05 and cached_logits.argmax() == logits.argmax()
    second.reset()
    assert "".join(second.generate(c, max_tokens=6)) == "".join(plain.generate(c, max_tokens=6))
    second.close()
    plain.close()


def test_an_unreadable_state_is_dropped_and_the_prompt_evaluated(tmp_path, path):
    cache = tmp_path / "prompts"
    llm = LlamaCppLLM(path, n_ctx=1024, prompt_cache=cache)
    a, b = prompt(llm, "What is 2 + 3?"), prompt(llm, "Name a river in Europe.")
    for p in (a, b):
        llm.reset()
        "".join(llm.generate(p, max_tokens=1))
    (state,) = next(cache.iterdir()).glob("*.state")
    state.write_bytes(state.read_bytes()[:1000])  # truncated by a crash or a full disk
    fresh = LlamaCppLLM(path, n_ctx=1024, prompt_cache=cache)
    assert PromptCache(cache, path, 1024).restore(fresh.llama, tokens(fresh, b)) == 0
    assert fresh.llama.n_tokens == 0 and not state.exists()
    plain = LlamaCppLLM(path, n_ctx=1024)
    assert "".join(fresh.generate(b, max_tokens=4)) == "".join(plain.generate(b, max_tokens=4))
    for m in (llm, fresh, plain):
        m.close()


def test_states_are_kept_per_model_and_context_size_and_pruned(tmp_path, path):
    one, other = PromptCache(tmp_path, path, 1024), PromptCache(tmp_path, path, 2048)
    assert one.dir != other.dir and one.dir.parent == tmp_path
    llm = LlamaCppLLM(path, n_ctx=1024, prompt_cache=tmp_path)
    small = PromptCache(tmp_path, path, 1024, max_entries=2, min_tokens=4)
    base = tokens(llm, prompt(llm, "Tell me about rivers and lakes and seas"))
    for i in range(4):  # four prompts, each sharing a longer prefix with the one before
        llm.reset()
        small.remember(llm.llama, base[:len(base) - 8 + 2 * i] + [11] * 3)
    assert len(list(small.dir.glob("*.state"))) == 2
    llm.close()


def test_a_lora_adapter_applied_over_the_model_keys_its_own_states(tmp_path):
    model, adapter = tmp_path / "base.gguf", tmp_path / "base.lora.gguf"
    model.write_bytes(b"GGUF model")
    adapter.write_bytes(b"GGUF adapter")
    plain = PromptCache(tmp_path / "cache", model, 512)
    with_adapter = PromptCache(tmp_path / "cache", model, 512, adapter=adapter)
    assert plain.dir != with_adapter.dir  # a state made with the adapter is never restored without it
    assert PromptCache(tmp_path / "cache", model, 512, adapter=adapter).dir == with_adapter.dir
    adapter.write_bytes(b"GGUF another adapter")
    assert PromptCache(tmp_path / "cache", model, 512, adapter=adapter).dir != with_adapter.dir
