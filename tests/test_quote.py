"""Quote mode: candidate spans, their scores on the bundled GGUF (dca.llm.scoring), and the Assistant's quoted answers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import bundled_gguf

from dca.assistant import Assistant
from dca.assistant.strategies.quote import Span, candidate_spans
from dca.errors import ConfigError
from dca.llm.scoring import score_continuations
from dca.rag import Store


def test_candidate_spans_are_verbatim_phrases_that_do_not_restate_the_question():
    spans = candidate_spans(["The probe Vellum reached the moon Tarsis in 1998. It was built in Oslo, Norway."],
                            "What did the probe Vellum reach?", max_words=3)
    texts = [s.text for s in spans]
    assert "moon Tarsis" in texts and "1998" in texts and "Oslo, Norway" in texts  # inner comma kept
    assert "Tarsis" in texts and "Norway" in texts and "reached" in texts
    assert "probe Vellum" not in texts and "Vellum" not in texts  # only question words
    assert not any(t.split()[0].lower() in {"the", "in", "it"} or t.split()[-1].lower() in {"the", "in"} for t in texts)
    assert "Tarsis in 1998" in texts and "1998. It" not in texts and "1998 It" not in texts  # within one sentence
    assert all(len(t.split()) <= 3 for t in texts) and len(texts) == len({t.lower() for t in texts})
    assert candidate_spans(["Xa b c d e f g h"], limit=5) == [Span("Xa", 0), Span("Xa b", 0), Span("Xa b c", 0),
                                                               Span("Xa b c d", 0), Span("b", 0)]
    two = candidate_spans(["Paris is big.", "Paris is old."])
    assert Span("Paris", 0) in two and Span("Paris", 1) not in two and Span("old", 1) in two


@pytest.fixture(scope="module")
def llm():
    from dca.llm import LlamaCppLLM

    model = LlamaCppLLM(bundled_gguf(), n_ctx=2048)
    yield model
    model.close()


def reference_score(llm, prompt, text, end):
    """Sum of token log-probabilities of text + end after prompt, one llama.eval at a time."""
    import llama_cpp

    llama = llm.llama
    tokens = llama.tokenize(prompt.encode(), add_bos=True, special=True)
    span = llama.tokenize(text.encode(), add_bos=False, special=False) + [end]
    llama.reset()
    llama.eval(tokens)
    total = 0.0
    for tok in span:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama._ctx.ctx, -1), shape=(llama.n_vocab(),))
        logits = logits.astype(np.float64)
        total += logits[tok] - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        llama.eval([tok])
    llama.reset()
    return total


@pytest.mark.slow
def test_span_scores_in_parallel_sequences_equal_one_at_a_time_scoring(llm):
    prompt = llm.render([{"role": "user", "content": "Passage: The probe Vellum reached the moon Tarsis in 1998.\n"
                                                     "Question: Which moon did the probe reach?"}])
    spans = ["moon Tarsis", "Tarsis", "1998", "the probe Vellum reached"]
    end = llm.llama.token_eos()
    scores, decoded = score_continuations(llm.llama, prompt, spans, end, parallel=3)  # two batches, the second of one
    expected = [reference_score(llm, prompt, s, end) for s in spans]
    assert scores == pytest.approx(expected, abs=0.05)
    assert decoded == sum(len(llm.llama.tokenize(s.encode(), add_bos=False)) for s in spans)


@pytest.mark.slow
def test_quote_mode_answers_with_a_cited_span_of_a_passage(tmp_path, embedder, llm):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "space.txt").write_text("The probe Vellum reached the moon Tarsis after a flight of nine years.")
    (docs / "bread.txt").write_text("To bake bread, knead the dough for ten minutes and let it rise for one hour.")
    store = Store.create(tmp_path / "store", embedder)
    store.ingest([docs])
    bot = Assistant(llm, store, top_k=2, min_similarity=-1.0, quote=True, history_turns=0)
    answer = bot.ask("How long did the flight of the probe Vellum take?")
    text, marker = answer.text.rsplit(" ", 1)
    passage = next(s for s in answer.sources if f"[{s.number}]" == marker)
    assert text and text in passage.text and passage.cited  # a verbatim span, cited by its passage
    assert answer.stats.generated_tokens > 50  # every candidate span was scored, not one answer generated
    with pytest.raises(ConfigError, match="--quote chooses one span"):
        Assistant(llm, store, quote=True, samples=4)

