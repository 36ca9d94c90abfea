"""End to end on the real parts: the bundled SmolLM2-135M GGUF, the bundled MiniLM embedder, a real store."""

from __future__ import annotations

import pytest
from conftest import bundled_gguf

from dca.assistant import Assistant
from dca.errors import ModelError
from dca.llm import LlamaCppLLM
from dca.rag import open_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm():
    model = LlamaCppLLM(bundled_gguf(), n_ctx=2048)
    yield model
    model.close()


def test_answer_from_the_bundled_gguf_cites_the_passage_that_holds_it(tmp_path, llm):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "rivers.md").write_text(
        "# Rivers of Lorvania\n\nThe Zorblax river flows through the city of Quenton. "
        "It is 412 kilometres long and ends in the Amber Sea.\n")
    (docs / "bread.txt").write_text("To bake rye bread, knead the dough for ten minutes, then let it rise for one hour.\n")
    (docs / "space.html").write_text("<html><head><title>Probes</title></head><body><h1>The Vellum probe</h1>"
                                     "<p>The probe Vellum reached the moon Tarsis after a flight of nine years.</p></body></html>")
    store = open_store(tmp_path / "store", create=True)
    assert not store.ingest([docs]).errors
    bot = Assistant(llm, store)
    answer = bot.ask("Which city does the Zorblax river flow through?")
    assert "Quenton" in answer.text
    cited = [s.source for s in answer.citations]
    assert cited and cited[0].endswith("rivers.md")
    gold = next(s for s in answer.sources if s.source.endswith("rivers.md"))
    assert f"[{gold.number}]" in answer.text
    assert answer.stats.answer_tokens > 0 and answer.stats.tokens_per_s > 0 and answer.stats.prompt_tokens > 50


def test_chat_template_and_streaming_from_the_bundled_gguf(llm):
    prompt = llm.render([{"role": "user", "content": "Say hello."}])
    assert prompt.endswith("<|im_start|>assistant\n") and llm.think_tags is None
    pieces = list(llm.generate(prompt, max_tokens=8))
    assert 1 <= llm.count_tokens("".join(pieces)) <= 8
    stopped = []
    list(llm.generate(prompt, max_tokens=50, cancel=lambda: stopped.append(1) or len(stopped) >= 2))
    assert len(stopped) == 2


def test_missing_and_corrupt_gguf(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        LlamaCppLLM(tmp_path / "absent.gguf")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(bundled_gguf().read_bytes()[:4096])
    with pytest.raises(ModelError, match="truncated.gguf: llama.cpp could not load this GGUF"):
        LlamaCppLLM(truncated)
