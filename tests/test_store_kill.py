"""An ingest killed with SIGKILL mid-way: the store still opens, keeps every committed file, and resumes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import HashEmbedder

from dca.rag import Store

CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from conftest import HashEmbedder
    from dca.rag import Store, StoreConfig

    class Slow(HashEmbedder):
        def embed(self, texts, *, is_query=False):
            time.sleep(0.3)
            return super().embed(texts, is_query=is_query)

    store = Store.create({store!r}, Slow(), StoreConfig(window_chunks=2))
    store.ingest([{docs!r}])
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_ingest_loses_nothing_and_resumes(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):
        (docs / f"note{i:02d}.txt").write_text(f"Note {i} is about the topic number{i} and nothing else.\n")
    store_dir = tmp_path / "store"
    code = CHILD.format(tests=str(Path(__file__).parent), store=str(store_dir), docs=str(docs))
    child = subprocess.Popen([sys.executable, "-c", code])
    db = store_dir / "store.sqlite"
    deadline = time.monotonic() + 60
    committed = 0
    while time.monotonic() < deadline and committed < 2:
        time.sleep(0.05)
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    committed = con.execute("SELECT COUNT(*) FROM files").fetchone()[0]
            except sqlite3.OperationalError:
                pass  # schema not created yet
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert 2 <= committed < 12, "the child should be killed part-way"

    store = Store.open(store_dir, HashEmbedder())
    kept = store.files()
    assert len(kept) >= 2 and store.info().chunks == len(kept)
    first = Path(kept[0]).stem  # e.g. note00
    number = int(first[4:])
    hits = store.search(f"topic number{number}", k=1)  # the stale dense index is rebuilt on first search
    assert hits and hits[0].path == kept[0]

    embedder = HashEmbedder()
    report = Store.open(store_dir, embedder).ingest([docs])
    assert sorted(report.unchanged) == kept
    assert len(report.added) == 12 - len(kept) and embedder.texts_embedded == 12 - len(kept)
    final = Store.open(store_dir, HashEmbedder())
    assert final.info().files == 12 and final.info().chunks == 12
    assert sorted(os.listdir(store_dir)) == ["index.faiss", "manifest.json", "store.sqlite"]
