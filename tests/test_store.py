"""Behaviour of dca.rag.store.Store on small corpora written to tmp_path, with the hashing embedder."""

from __future__ import annotations

import json
import random
import sqlite3
import sys

import pytest
from conftest import HashEmbedder

from dca.errors import ConfigError, MissingDependencyError, StoreError
from dca.rag import index as vindex
from dca.rag.lexical import bm25_scores
from dca.rag.store import STORE_FILES, Store, StoreConfig

PLANTED = "The lighthouse keeper polished the brass lantern every foggy evening before the ferries came."
QUERY = "lighthouse keeper brass lantern"
_SYLLABLES = "ka lo mi ru sen tav bor quil fen dra zo pim gul vesh nar tok".split()


def _para(seed: int | str, n: int = 12) -> str:
    """A sentence of ``n`` made-up words that no other seed's paragraph shares (in practice)."""
    rng = random.Random(seed)
    return " ".join("".join(rng.choice(_SYLLABLES) for _ in range(4)) for _ in range(n)).capitalize() + "."


def write_corpus(root, n=20, planted_at=7, prefix="doc"):
    """``n`` one-paragraph text files (one chunk each); file ``planted_at`` holds PLANTED. Returns the paths."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = (root / f"{prefix}{i:02d}.txt").resolve()
        path.write_text(PLANTED if i == planted_at else _para(f"{prefix}{i}"))
        paths.append(path)
    return paths


def new_store(tmp_path, embedder, name="store", **config):
    return Store.create(tmp_path / name, embedder, StoreConfig(**config))


def manifest(store):
    return json.loads((store.path / "manifest.json").read_text())


def db_generation(store):
    with sqlite3.connect(store.path / "store.sqlite") as db:
        return int(db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])


def paths_found(store, query, mode, k=100):
    return {h.path for h in store.search(query, k=k, mode=mode)}


def snapshot(store, queries=(QUERY, "ferries evening", _para(3)[:30])):
    return [[(h.source, h.text, round(h.score, 5)) for h in store.search(q, k=5, mode=m)]
            for q in queries for m in ("dense", "lexical", "hybrid")]


class FailingEmbedder(HashEmbedder):
    """Raises KeyboardInterrupt on its ``fail_on``-th call (counted from 1), as Ctrl-C during embedding."""

    fail_on: int | None = None

    def embed(self, texts, *, is_query=False):
        if self.fail_on is not None and self.calls + 1 == self.fail_on:
            raise KeyboardInterrupt
        return super().embed(texts, is_query=is_query)


# -- 1. file contract -------------------------------------------------------------------------------


def test_store_dir_holds_exactly_the_documented_files(tmp_path, embedder):
    paths = write_corpus(tmp_path / "corpus", n=5)
    store = new_store(tmp_path, embedder, chunk_tokens=64, overlap_tokens=8)
    report = store.ingest([tmp_path / "corpus"])
    assert sorted(report.added) == [str(p) for p in paths] and not report.errors
    assert {p.name for p in store.path.iterdir()} == set(STORE_FILES)
    m = manifest(store)
    assert (m["format"], m["version"]) == ("dca-rag-store", 1)
    assert m["embedder"] == {"name": "hash-embedder", "dim": 64, "backend": "sentence-transformers"}
    assert m["chunking"] == {"chunk_tokens": 64, "overlap_tokens": 8, "hnsw_threshold": 50_000, "window_chunks": 512}
    assert m["index"] == {"type": "flat", "generation": db_generation(store), "vectors": 5}
    info = store.info()
    assert (info.files, info.documents, info.chunks, info.dim, info.index_type) == (5, 5, 5, 64, "flat")
    assert info.bytes_on_disk == sum(p.stat().st_size for p in store.path.iterdir()) > 0
    # The recorded chunking wins over the config of a later open.
    assert Store.open(store.path, embedder, config=StoreConfig(chunk_tokens=300)).config.chunk_tokens == 64


# -- 2. incremental re-ingest -----------------------------------------------------------------------


def test_reingest_skips_unchanged_and_reembeds_only_changed_chunks(tmp_path, embedder):
    corpus = tmp_path / "corpus"
    other = write_corpus(corpus, n=3)
    paras = [_para(100 + i, n=10) for i in range(4)]
    multi = (corpus / "multi.txt").resolve()
    multi.write_text("\n\n".join(paras))
    store = new_store(tmp_path, embedder, chunk_tokens=16, overlap_tokens=0)
    first = store.ingest([corpus])
    assert store.info().chunks == 3 + 4 and first.chunks_added == 7

    calls = embedder.calls
    again = store.ingest([corpus])
    assert sorted(again.unchanged) == sorted(map(str, other + [multi])) and not again.added + again.updated
    assert embedder.calls == calls and again.chunks_added == 0

    old_word, new_para = paras[1].split()[0], "Quokkas gather marmalade near volcanic telescopes daily."
    multi.write_text("\n\n".join([paras[0], new_para, paras[2], paras[3]]))
    embedded = embedder.texts_embedded
    changed = store.ingest([corpus])
    assert changed.updated == [str(multi)] and sorted(changed.unchanged) == sorted(map(str, other))
    assert (changed.chunks_added, changed.chunks_reused) == (1, 3)
    assert embedder.texts_embedded == embedded + 1
    assert paths_found(store, old_word, "lexical") == set()
    assert paths_found(store, "marmalade telescopes", "lexical") == {str(multi)}
    assert store.search("quokkas marmalade volcanic", k=1, mode="dense")[0].text == new_para
    assert store.info().chunks == 7 and store.files() == sorted(map(str, other + [multi]))


def test_remove_file_and_directory_prefix(tmp_path, embedder):
    a = write_corpus(tmp_path / "sub", n=3, planted_at=0, prefix="a")
    b = write_corpus(tmp_path / "subx", n=2, planted_at=-1, prefix="b")
    store = new_store(tmp_path, embedder)
    store.ingest([tmp_path / "sub", tmp_path / "subx"])

    assert store.remove([a[0]]) == [str(a[0])]
    assert str(a[0]) not in paths_found(store, QUERY, "dense") | paths_found(store, QUERY, "lexical")
    assert paths_found(store, QUERY, "lexical") == set()
    # "sub" is a prefix of "subx" as a string, not as a directory: subx must survive.
    assert sorted(store.remove([tmp_path / "sub"])) == [str(a[1]), str(a[2])]
    assert store.files() == sorted(map(str, b))
    assert paths_found(store, "anything at all", "dense") == set(map(str, b))
    assert manifest(store)["index"]["vectors"] == store.info().chunks == 2
    assert store.remove([tmp_path / "nowhere.txt"]) == []


# -- 3. bad inputs ----------------------------------------------------------------------------------


def test_bad_files_are_reported_and_good_ones_ingested(tmp_path, embedder):
    d = tmp_path / "mixed"
    d.mkdir()
    good = (d / "good.txt").resolve()
    good.write_text(PLANTED)
    (d / "notes.md").write_text("# Notes\n\nSpinach omelettes need patience.")
    bad = {
        "latin.txt": ("Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e".encode("latin-1"), "not valid UTF-8"),
        "blob.txt": (b"abc\x00\x01\x02def", "binary"),
        "empty.txt": (b"", "empty"),
        "broken.pdf": (b"%PDF-1.4\nthis is not really a pdf\n", "PDF"),
        "data.xyz": (b"tabular stuff", "unsupported file type"),
    }
    for name, (data, _) in bad.items():
        (d / name).write_bytes(data)
    records = (d / "records.jsonl").resolve()
    records.write_text('{"id": "r1", "text": "Otters juggle pebbles."}\n{"id": "r2", "text": oops\n'
                       '{"id": "r3", "text": "Herons wade through reeds."}\n')
    report = new_store(tmp_path, embedder).ingest([d, d / "data.xyz", tmp_path / "missing"])
    store = Store.open(tmp_path / "store", embedder)
    expected = {str((d / n).resolve()) for n in bad} | {str(tmp_path / "missing")}
    assert set(report.errors) == expected
    for name, (_, reason) in bad.items():
        assert reason in report.errors[str((d / name).resolve())]
    assert sorted(report.added) == sorted([str(good), str((d / "notes.md").resolve()), str(records)])
    assert len(report.warnings) == 1 and f"{records}:2:" in report.warnings[0]
    assert store.info().documents == 4  # good, notes, r1, r3
    assert paths_found(store, QUERY, "hybrid", k=1) == {str(good)}
    heron = store.search("herons reeds", k=1, mode="lexical")[0]
    assert (heron.doc_id, heron.source, heron.path) == ("r3", f"{records}#r3", str(records))
    assert store.search("spinach omelettes", k=1, mode="lexical")[0].doc_id == str((d / "notes.md").resolve())

    # A stored file that turns into latin-1 keeps its chunks and is reported.
    chunks = store.info().chunks
    good.write_bytes("Caf\u00e9 \u00e0 la lighthouse".encode("latin-1"))
    later = store.ingest([good])
    assert list(later.errors) == [str(good)] and "UTF-8" in later.errors[str(good)]
    assert not later.updated and store.info().chunks == chunks
    assert store.search(QUERY, k=1, mode="lexical")[0].text == PLANTED


def test_doc_id_of_a_file_under_a_hash_directory_is_its_path(tmp_path, embedder):
    path = write_corpus(tmp_path / "C#notes", n=1, planted_at=0)[0]
    store = new_store(tmp_path, embedder)
    store.ingest([path])
    assert store.search(QUERY, k=1)[0].doc_id == str(path)


# -- 4. store errors --------------------------------------------------------------------------------


def test_opening_errors_name_the_problem_and_the_fix(tmp_path, embedder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="dca rag ingest"):
        Store.open(tmp_path / "empty", embedder)
    assert list((tmp_path / "empty").iterdir()) == []

    write_corpus(tmp_path / "corpus", n=2)
    new_store(tmp_path, embedder).ingest([tmp_path / "corpus"])
    with pytest.raises(StoreError, match=r"'hash-embedder'.*'other'"):
        Store.open(tmp_path / "store", HashEmbedder(name="other"))

    mpath = tmp_path / "store" / "manifest.json"
    good = mpath.read_text()
    mpath.write_text(good.replace('"version": 1', '"version": 999'))
    with pytest.raises(StoreError, match=r"version 999.*dca rag ingest PATH --store-dir"):
        Store.open(tmp_path / "store", embedder)
    mpath.write_text("{not json")
    with pytest.raises(StoreError, match="unreadable store manifest"):
        Store.open(tmp_path / "store", embedder)

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a dca store"):
        Store.create(tmp_path / "busy", embedder)
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["thesis.txt"]


# -- 5. interruption, crash and cancel --------------------------------------------------------------


def test_interrupted_ingest_keeps_finished_windows_and_resumes(tmp_path):
    old = write_corpus(tmp_path / "old", n=2, planted_at=0, prefix="old")
    corpus = write_corpus(tmp_path / "corpus", n=10, planted_at=-1)
    emb = FailingEmbedder()
    store = new_store(tmp_path, emb, window_chunks=2)
    store.ingest([tmp_path / "old"])
    emb.fail_on = emb.calls + 3  # windows of 2 files: the first two windows commit, the third fails
    with pytest.raises(KeyboardInterrupt):
        store.ingest([tmp_path / "corpus"])
    store.close()

    store = Store.open(tmp_path / "store", HashEmbedder(name="hash-embedder"))
    assert store.files() == sorted(map(str, old + corpus[:4]))
    assert store.search(QUERY, k=1, mode="dense")[0].path == str(old[0])
    assert paths_found(store, _para("doc3"), "lexical", k=1) == {str(corpus[3])}

    fresh = HashEmbedder()
    store = Store.open(tmp_path / "store", fresh)
    report = store.ingest([tmp_path / "old", tmp_path / "corpus"])
    assert sorted(report.unchanged) == sorted(map(str, old + corpus[:4]))
    assert sorted(report.added) == sorted(map(str, corpus[4:]))
    assert fresh.texts_embedded == report.chunks_added == 6

    once = new_store(tmp_path, HashEmbedder(), name="once", window_chunks=2)
    once.ingest([tmp_path / "old", tmp_path / "corpus"])
    assert store.files() == once.files() and store.info().chunks == once.info().chunks == 12
    assert snapshot(store) == snapshot(once)


def test_one_large_file_is_embedded_in_windows_and_resumes_mid_file(tmp_path):
    corpus = tmp_path / "big.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"r{i}", "text": _para(f"rec{i}")}) + "\n" for i in range(10)))
    emb = FailingEmbedder()
    store = new_store(tmp_path, emb, window_chunks=3)
    seen = []
    emb.fail_on = 3  # two windows (6 chunks) embedded, then Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        store.ingest([corpus], progress=seen.append)
    assert [p.done for p in seen] == [3, 6] and all(p.metrics["files_done"] == 0 for p in seen)
    assert {(p.job, p.unit, p.total) for p in seen} == {("ingest", "chunks", 10)}
    store.close()

    store = Store.open(tmp_path / "store", HashEmbedder())
    assert store.files() == [] and store.search(QUERY, k=1) == []  # the file is all-or-nothing
    fresh = HashEmbedder()
    report = Store.open(tmp_path / "store", fresh).ingest([corpus])
    assert report.added == [str(corpus.resolve())]
    assert fresh.texts_embedded == report.chunks_added == 4 and report.chunks_reused == 6
    done = Store.open(tmp_path / "store", HashEmbedder())
    assert done.info().chunks == 10
    assert {h.doc_id for h in done.search(_para("rec7"), k=1, mode="lexical")} == {"r7"}


@pytest.mark.parametrize("fresh_store", [False, True])
def test_crash_between_commit_and_index_write_is_repaired_on_search(tmp_path, embedder, monkeypatch, fresh_store):
    corpus = write_corpus(tmp_path / "corpus", n=6, planted_at=-1)
    store = new_store(tmp_path, embedder)
    if not fresh_store:
        store.ingest(corpus[:5])
    before = manifest(store)["index"]["generation"]

    def killed(*args):
        raise RuntimeError("process killed")

    planted = (tmp_path / "corpus" / "late.txt").resolve()
    planted.write_text(PLANTED)
    monkeypatch.setattr(vindex, "write_index", killed)
    with pytest.raises(RuntimeError):
        store.ingest([planted])
    monkeypatch.undo()
    assert manifest(store)["index"]["generation"] == before < db_generation(store)

    store = Store.open(tmp_path / "store", embedder)
    hit = store.search(QUERY, k=1, mode="dense")[0]
    want = float(HashEmbedder().embed([PLANTED])[0] @ HashEmbedder().embed([QUERY])[0])
    assert hit.path == str(planted) and hit.similarity == pytest.approx(want) and want > 0.3
    m = manifest(store)
    assert m["index"]["generation"] == db_generation(store)
    assert m["index"]["vectors"] == store.info().chunks == (1 if fresh_store else 6)
    assert m["embedder"]["dim"] == 64

    # A damaged index file is rebuilt from the vectors in SQLite.
    (store.path / "index.faiss").write_bytes(b"garbage")
    store = Store.open(tmp_path / "store", embedder)
    assert store.search(QUERY, k=1, mode="dense")[0].path == str(planted)

    # A deleted index file is rebuilt too.
    (store.path / "index.faiss").unlink()
    store = Store.open(tmp_path / "store", embedder)
    assert store.search(QUERY, k=1, mode="dense")[0].path == str(planted)
    assert (store.path / "index.faiss").exists()


def test_cancel_stops_after_the_current_window(tmp_path, embedder):
    corpus = write_corpus(tmp_path / "corpus", n=6)
    store = new_store(tmp_path, embedder, window_chunks=2)
    seen = []
    report = store.ingest([tmp_path / "corpus"], progress=seen.append, cancel=lambda: True)
    assert report.cancelled and report.added == list(map(str, corpus[:2]))
    assert store.files() == report.added
    assert [(p.metrics["files_done"], p.metrics["files_total"], p.done) for p in seen] == [(2, 6, 2)]
    rest = store.ingest([tmp_path / "corpus"])
    assert not rest.cancelled and sorted(rest.added) == list(map(str, corpus[2:]))


def test_search_on_an_empty_store_returns_nothing(tmp_path, embedder):
    store = new_store(tmp_path, embedder)
    assert store.search("anything", mode="hybrid") == [] and store.search("anything", mode="dense") == []


# -- 6. search --------------------------------------------------------------------------------------


@pytest.fixture
def corpus_store(tmp_path, embedder):
    paths = write_corpus(tmp_path / "corpus", n=20)
    store = new_store(tmp_path, embedder)
    store.ingest([tmp_path / "corpus"])
    return store, paths


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_every_mode_finds_the_planted_passage(corpus_store, mode):
    store, paths = corpus_store
    hits = store.search(QUERY, k=3, mode=mode)
    assert hits[0].path == str(paths[7]) and hits[0].text == PLANTED
    assert len(hits) == (1 if mode == "lexical" else 3)  # only one chunk has the query's words
    assert all(-1.0 <= h.similarity <= 1.0 for h in hits)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    if mode == "dense":
        assert scores == pytest.approx([h.similarity for h in hits], abs=1e-5)
    assert len(store.search(_para(1)[:20] + " " + QUERY, k=2, mode=mode)) <= 2


def test_hybrid_score_is_the_convex_fusion_of_the_normalized_scores(corpus_store):
    from dca.rag.lexical import LEXICAL_WEIGHT

    store, paths = corpus_store
    query = QUERY + " " + " ".join(paths[2].read_text().split()[:3] + paths[11].read_text().split()[:2])
    dense = store.search(query, k=100, mode="dense")
    lexical = store.search(query, k=100, mode="lexical")
    assert len(dense) == 20 and len(lexical) >= 3

    def scaled(hits):
        lo, hi = min(h.score for h in hits), max(h.score for h in hits)
        return {h.chunk_id: (h.score - lo) / (hi - lo) for h in hits}

    d, lx = scaled(dense), scaled(lexical)
    expected = {c: LEXICAL_WEIGHT * lx.get(c, 0.0) + (1 - LEXICAL_WEIGHT) * d.get(c, 0.0) for c in set(d) | set(lx)}
    hybrid = store.search(query, k=5, mode="hybrid", candidates=100)
    assert len(hybrid) == 5
    assert [h.score for h in hybrid] == pytest.approx(sorted(expected.values(), reverse=True)[:5])
    assert all(h.score == pytest.approx(expected[h.chunk_id]) for h in hybrid)
    # the weight's ends are the single rankings
    assert [h.chunk_id for h in store.search(query, k=3, mode="hybrid", candidates=100, lexical_weight=1.0)] == \
        [h.chunk_id for h in lexical[:3]]
    assert [h.chunk_id for h in store.search(query, k=3, mode="hybrid", candidates=100, lexical_weight=0.0)] == \
        [h.chunk_id for h in dense[:3]]
    with pytest.raises(ConfigError, match="--lexical-weight"):
        store.search(query, lexical_weight=1.5)


def test_convex_fusion_keeps_the_margin_that_rank_fusion_loses():
    from dca.rag.lexical import convex_fusion, reciprocal_rank_fusion

    dense = [(1, 0.52), (2, 0.51), (3, 0.50), (4, 0.10)]  # unsure between its first three
    lexical = [(3, 30.0), (1, 2.0), (2, 1.0)]  # sure of its first: a rare term matched
    assert [i for i, _ in convex_fusion(dense, lexical, 0.5)][0] == 3
    assert [i for i, _ in reciprocal_rank_fusion([dense, lexical], key=lambda x: x[0])][0][0] == 1  # ranks only
    fused = dict(convex_fusion(dense, [(3, 30.0)], 0.5))  # absent from a ranking: 0 there
    assert fused[3] == pytest.approx(0.5 + 0.5 * 0.40 / 0.42) and fused[1] == pytest.approx(0.5)
    assert fused[2] == pytest.approx(0.5 * 0.41 / 0.42) and fused[4] == pytest.approx(0.0)


def test_awkward_queries_and_bad_arguments(corpus_store):
    store, paths = corpus_store
    assert store.search("?!... ---", k=3, mode="lexical") == []
    assert len(store.search("?!... ---", k=3, mode="hybrid")) == 3  # dense still ranks
    stop = store.search("the of and", k=3, mode="lexical")  # only stopwords: they are searched as is
    assert [h.path for h in stop] == [str(paths[7])]
    assert store.search('brass AND "lantern NEAR( -foggy*', k=1, mode="lexical")[0].path == str(paths[7])
    with pytest.raises(ConfigError, match="--mode"):
        store.search(QUERY, mode="fuzzy")
    with pytest.raises(ConfigError, match="-k"):
        store.search(QUERY, k=0)


def test_bm25_scores_rank_rare_terms_and_ignore_fts_syntax():
    texts = ["The brass lantern hung by the door.", "A door, a door, and another door.",
             "Nothing to see here.", "The lanterns were lit at dusk."]
    scores = bm25_scores("Where was the brass lantern?", texts)
    assert scores.shape == (4,)
    assert scores[0] > scores[3] > 0  # both terms beat one (stemmed: lanterns ~ lantern)
    assert scores[1] == scores[2] == 0  # no query term ("where", "was", "the" are function words)
    assert (bm25_scores('brass AND "lantern NEAR( -foggy*', texts) > 0).tolist() == [True, False, False, True]
    assert bm25_scores("?!", texts).tolist() == [0, 0, 0, 0]
    assert bm25_scores("lantern", []).shape == (0,)


# -- 7. index type ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "kind"), [(12, "hnsw"), (8, "flat")])
def test_index_type_follows_the_hnsw_threshold(tmp_path, embedder, n, kind):
    paths = write_corpus(tmp_path / "corpus", n=n, planted_at=5)
    store = new_store(tmp_path, embedder, hnsw_threshold=10)
    store.ingest([tmp_path / "corpus"])
    assert manifest(store)["index"]["type"] == store.info().index_type == kind
    reopened = Store.open(tmp_path / "store", embedder)  # reads index.faiss back
    assert [h.path for h in reopened.search(QUERY, k=3, mode="dense")][0] == str(paths[5])


# -- 8. optional dependency -------------------------------------------------------------------------


def test_missing_faiss_gives_the_install_hint(tmp_path, embedder, monkeypatch):
    write_corpus(tmp_path / "corpus", n=2)
    store = new_store(tmp_path, embedder)
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'dca\[rag\]'"):
        store.ingest([tmp_path / "corpus"])
