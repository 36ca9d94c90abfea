"""The embedder without torch: the bundled MiniLM written to GGUF by dca and run in llama.cpp, agreeing with
sentence-transformers; stores that check the backend that built them; the CLI with torch unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import HashEmbedder

from dca.errors import ConfigError, ModelError, StoreError
from dca.rag import Store

TEXTS = ["The Zorblax river flows through the city of Quenton.", "What is the capital of France?", "Hello",
         "Naïve café owners serve crème brûlée; 3.14 costs $2,500 (approx.)!",
         "A rather long passage about rivers and cities. " * 60]  # > 256 tokens: truncated as sentence-transformers


class Backend(HashEmbedder):
    """A hashed embedder that says which backend it is, optionally with its vectors perturbed."""

    def __init__(self, backend: str, noise: float = 0.0):
        super().__init__()
        self.backend, self.noise = backend, noise

    def embed(self, texts, *, is_query=False):
        vecs = super().embed(texts)
        if self.noise:
            vecs = vecs + self.noise * np.random.default_rng(0).standard_normal(vecs.shape).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs


def make_store(tmp_path, embedder):
    docs = tmp_path / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for i in range(5):
        (docs / f"d{i}.txt").write_text(f"Document {i} is about topic number {i} and rivers of Lorvania.\n")
    store = Store.create(tmp_path / "store", embedder)
    assert not store.ingest([docs]).errors
    store.close()
    return tmp_path / "store"


def test_a_store_searched_through_another_backend_checks_that_the_vectors_agree(tmp_path):
    path = make_store(tmp_path, Backend("sentence-transformers"))
    same = Store.open(path, Backend("llama.cpp"))
    assert same.search("rivers of Lorvania", k=1)  # the vectors agree: searched, and the check is recorded
    assert same.manifest["embedder"]["agrees"] == {"llama.cpp": pytest.approx(1.0, abs=1e-5)}
    assert Store.open(path, Backend("llama.cpp")).check_embedder() == pytest.approx(1.0, abs=1e-5)
    other = make_store(tmp_path / "b", Backend("sentence-transformers"))
    with pytest.raises(StoreError, match=r"built by the sentence-transformers backend; this run embeds through "
                                         r"llama\.cpp.*DCA_EMBEDDER_BACKEND=sentence-transformers"):
        Store.open(other, Backend("llama.cpp", noise=0.5)).search("rivers", k=1)


def test_the_backend_is_chosen_by_the_environment(monkeypatch):
    from dca.rag import default_embedder

    monkeypatch.setenv("DCA_EMBEDDER_BACKEND", "onnx")
    with pytest.raises(ConfigError, match="llama.cpp, sentence-transformers.*DCA_EMBEDDER_BACKEND"):
        default_embedder()


def test_a_directory_that_is_not_a_bert_sentence_model_is_refused(tmp_path):
    from dca.llm.embedding import LlamaCppEmbedder, write_embedding_gguf

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelError, match="model_type 'llama' is not bert"):
        write_embedding_gguf(tmp_path, tmp_path / "x.gguf")
    from conftest import bundled_gguf

    with pytest.raises(ModelError, match="not a pooling embedding model"):
        LlamaCppEmbedder(bundled_gguf())


@pytest.mark.slow
def test_the_gguf_embedder_agrees_with_sentence_transformers(tmp_path):
    from dca.llm.embedding import LlamaCppEmbedder
    from dca.rag import SentenceTransformerEmbedder
    from dca.rag.embed import bundled_gguf_embedder

    gguf = LlamaCppEmbedder(bundled_gguf_embedder(tmp_path))
    st = SentenceTransformerEmbedder()
    assert (gguf.name, gguf.dim, gguf.max_seq_length) == (st.name, st.dim, 256)
    ours, theirs = gguf.embed(TEXTS), st.embed(TEXTS)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * theirs).sum(axis=1).min() > 0.9999
    ids = gguf.tokens(TEXTS[-1])
    assert len(ids) == 256 and ids[-1] == gguf.llama.token_eos() and ids[0] == gguf.llama.token_bos()
    assert gguf.embed([]).shape == (0, 384)
    stamp = (tmp_path / "all-MiniLM-L6-v2.F32.source").read_text()
    assert stamp.endswith(str((st.path / "model.safetensors").stat().st_mtime_ns))


@pytest.mark.slow
def test_ingest_search_chat_and_serve_work_with_torch_unimportable(tmp_path):
    """A torch-free install, simulated: torch, transformers and sentence-transformers cannot be imported."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "rivers.md").write_text("The Zorblax river flows through the city of Quenton. It is 412 kilometres long.\n")
    (docs / "bread.txt").write_text("To bake rye bread, knead the dough for ten minutes.\n")
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "sentence_transformers"):
                    raise ImportError(name + " is not installed (blocked)")
        sys.meta_path.insert(0, Block())
        import httpx
        from typer.testing import CliRunner
        from dca.cli import app
        store = {str(tmp_path / "store")!r}
        run = CliRunner().invoke
        r = run(app, ["rag", "ingest", {str(docs)!r}, "--store-dir", store])
        assert r.exit_code == 0, r.output
        r = run(app, ["rag", "search", "Zorblax river", "--store-dir", store, "-k", "1"])
        assert r.exit_code == 0 and "rivers.md" in r.output, r.output
        r = run(app, ["rag", "search", "How long is the Zorblax?", "--store-dir", store, "-k", "1", "--rerank", "2"])
        assert r.exit_code == 0 and "rivers.md" in r.output, r.output
        r = run(app, ["chat", "Which city does the Zorblax river flow through?", "--store-dir", store])
        assert r.exit_code == 0 and "Quenton" in r.output, r.output
        from dca.assistant import Assistant
        from dca.server import ServerThread, create_app
        with ServerThread(create_app(Assistant(store=store, max_tokens=24), model_id="m")) as s:
            emb = httpx.post(s.url + "/v1/embeddings", json={{"model": "all-MiniLM-L6-v2", "input": "x"}}).json()
            chat = httpx.post(s.url + "/v1/chat/completions", timeout=60, json={{"model": "m",
                              "messages": [{{"role": "user", "content": "Where does the Zorblax river flow?"}}]}}).json()
        assert len(emb["data"][0]["embedding"]) == 384 and chat["sources"], (emb, chat)
        assert not any(m.split(".")[0] in ("torch", "transformers", "sentence_transformers") for m in sys.modules)
        print("torch-free: ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "torch-free: ok" in run.stdout, run.stdout[-2000:] + run.stderr[-3000:]
