"""Parallel sampling on the bundled GGUF: shared prompt evaluation, greedy parity, stops, cancel."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import bundled_gguf

from dca.llm import LlamaCppLLM
from dca.llm.sampling import apply_repeat_penalty, sample_parallel

pytestmark = pytest.mark.slow

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")


@pytest.fixture(scope="module")
def llm():
    model = LlamaCppLLM(bundled_gguf(), n_ctx=2048)
    yield model
    model.close()


def test_greedy_sequences_match_the_models_own_greedy_decoding(llm):
    prompt = llm.render([{"role": "user", "content": QUESTION}])
    reference = "".join(llm.generate(prompt, max_tokens=24, repeat_penalty=1.0))
    outs = sample_parallel(llm.llama, prompt, n=3, max_tokens=24, temperature=0)
    assert [o.text for o in outs] == [reference] * 3  # every sequence reads the shared prompt cells right
    assert all(o.tokens == 24 and o.finish == "length" and o.mean_logprob < 0 for o in outs)


def test_repeat_penalty_matches_llama_cpp_greedy_with_the_same_penalty(llm):
    prompt = llm.render([{"role": "user", "content": "Count: 1, 1, 1, 1, 1, 1,"}])
    plain = sample_parallel(llm.llama, prompt, n=2, max_tokens=48, temperature=0)
    for penalty in (1.3, 1.1):
        llm.llama.reset()  # the whole prompt evaluated in one batch, as sample_parallel does (no cached prefix)
        reference = "".join(llm.generate(prompt, max_tokens=48, repeat_penalty=penalty))
        outs = sample_parallel(llm.llama, prompt, n=2, max_tokens=48, temperature=0, repeat_penalty=penalty)
        assert [o.text for o in outs] == [reference] * 2
    assert outs[0].text != plain[0].text  # the penalty changed the greedy path, and the samples followed it


def test_apply_repeat_penalty_divides_positive_and_multiplies_negative_logits_once():
    logits = np.array([2.0, -1.0, 0.5, 3.0], dtype=np.float32)
    out = apply_repeat_penalty(logits, [0, 1, 0, 0], 2.0)
    assert out.tolist() == [1.0, -2.0, 0.5, 3.0] and logits.tolist() == [2.0, -1.0, 0.5, 3.0]
    assert apply_repeat_penalty(logits, [], 2.0) is logits and apply_repeat_penalty(logits, [0], 1.0) is logits


def test_sampling_is_seeded_diverse_and_stops(llm):
    prompt = llm.render([{"role": "user", "content": QUESTION}])
    a = sample_parallel(llm.llama, prompt, n=4, max_tokens=32, temperature=1.0, seed=7)
    b = sample_parallel(llm.llama, prompt, n=4, max_tokens=32, temperature=1.0, seed=7)
    assert [o.text for o in a] == [o.text for o in b]
    assert len({o.text for o in a}) > 1
    stopped = sample_parallel(llm.llama, prompt, n=2, max_tokens=64, temperature=0, stop=["clips"])
    assert all(o.finish == "stop" and "clips" not in o.text for o in stopped)
    calls = []
    cancelled = sample_parallel(llm.llama, prompt, n=2, max_tokens=64, cancel=lambda: calls.append(1) or len(calls) > 3)
    assert all(o.finish == "cancelled" and o.tokens == 3 for o in cancelled)
    with pytest.raises(ValueError, match="n must be"):
        sample_parallel(llm.llama, prompt, n=0, max_tokens=4)
