"""The RAG store: a directory holding chunks, their embeddings, a FAISS index and a lexical index.

Store directory format, version 1 (``STORE_VERSION``):

``manifest.json``
    ``{"format": "dca-rag-store", "version": 1, "embedder": {"name", "dim", "backend", "agrees"}, "chunking": {...},
    "index": {"type": "flat"|"hnsw", "generation": int, "vectors": int}, "created", "updated"}``;
    written atomically after every change.
``store.sqlite``
    the source of truth: tables ``meta``, ``files`` (path, sha256, size, documents, chunks),
    ``chunks`` (file, source, title, text, start/end character offsets, content hash, float32 vector),
    ``pending`` (vectors of an unfinished ingest, by content hash) and the FTS5 table ``chunks_fts``
    (Porter-stemmed lexical index, ranked by BM25). Each embedded window and each file replacement is
    one transaction, so an interrupted ingest keeps every finished file, and the vectors of the
    unfinished ones for the next run, and nothing half-written.
``index.faiss``
    the dense index (exact inner product, or HNSW from ``hnsw_threshold`` vectors on), derived from
    the vectors in SQLite; rebuilt when its generation lags the database's (after a crash).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Literal

import numpy as np

from ..errors import ConfigError, LoaderError, ManifestError, StoreError
from ..paths import atomic_write_text, read_manifest, remove_stale_temporaries, sha256_file
from ..progress import Progress, ProgressFn, emitter
from . import index as vindex
from .chunking import chunk_document
from .embed import BACKEND_ENV, Embedder
from .lexical import LEXICAL_WEIGHT, convex_fusion, fts_query
from .loaders import iter_files, load_file

log = logging.getLogger(__name__)
# the same model through llama.cpp and sentence-transformers: F16 GGUF weights give cosine > 0.9999 (benchmarks/)
AGREEMENT_MIN_COSINE = 0.999


def backend_of(embedder) -> str:
    """The backend an embedder runs on (its ``backend`` attribute; ``sentence-transformers`` for an embedder that
    does not say, as every store before backends were recorded)."""
    return getattr(embedder, "backend", "sentence-transformers")

STORE_FORMAT = "dca-rag-store"
STORE_VERSION = 1
MANIFEST = "manifest.json"
DATABASE = "store.sqlite"
INDEX = "index.faiss"
STORE_FILES = (MANIFEST, DATABASE, INDEX)

SearchMode = Literal["dense", "lexical", "hybrid"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    documents INTEGER NOT NULL, chunks INTEGER NOT NULL, ingested_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, file TEXT NOT NULL, source TEXT NOT NULL, title TEXT NOT NULL,
    text TEXT NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL, hash TEXT NOT NULL,
    vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks(file);
CREATE INDEX IF NOT EXISTS chunks_hash ON chunks(hash);
CREATE TABLE IF NOT EXISTS pending (hash TEXT PRIMARY KEY, vector BLOB NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(title, text, tokenize='porter unicode61');
"""


@dataclass
class StoreConfig:
    """Settings of a store, fixed when it is created and recorded in its manifest.

    Args:
        chunk_tokens: chunk budget in approximate sub-word tokens (``--chunk-tokens``).
        overlap_tokens: tokens shared by consecutive chunks (``--overlap-tokens``).
        hnsw_threshold: from this many vectors on, the dense index is HNSW instead of exact.
        window_chunks: chunks embedded per transaction; an interrupted ingest loses at most one window
            of embedding work.
    """

    chunk_tokens: int = 220
    overlap_tokens: int = 32
    hnsw_threshold: int = 50_000
    window_chunks: int = 512

    def __post_init__(self):
        if self.chunk_tokens < 16:
            raise ConfigError(f"--chunk-tokens must be >= 16, got {self.chunk_tokens}")
        if not 0 <= self.overlap_tokens < self.chunk_tokens // 2:
            raise ConfigError(
                f"--overlap-tokens must be in [0, {self.chunk_tokens // 2}) for --chunk-tokens "
                f"{self.chunk_tokens}, got {self.overlap_tokens}"
            )
        if self.hnsw_threshold < 1 or self.window_chunks < 1:
            raise ConfigError("hnsw_threshold and window_chunks must be >= 1")


@dataclass(frozen=True)
class SearchHit:
    """One retrieved chunk.

    Attributes:
        chunk_id: the chunk's id in the store.
        text: the chunk text.
        title: document title and heading path.
        source: the document key (file path, or ``path#id`` for a JSONL record).
        path: the file the chunk came from.
        start, end: character offsets of the chunk in its document.
        score: the ranking score of the mode (cosine for dense, BM25 for lexical, the convex fusion for hybrid; with
            ``rerank``, the cross-encoder's logit).
        similarity: cosine similarity of query and chunk embeddings, in [-1, 1], for every mode.
    """

    chunk_id: int
    text: str
    title: str
    source: str
    path: str
    start: int
    end: int
    score: float
    similarity: float

    @property
    def doc_id(self) -> str:
        """The JSONL record id for records (the part after ``#``), else the file path."""
        return self.source[len(self.path) + 1:] if self.source != self.path else self.source


@dataclass
class IngestReport:
    """What an ingest did. ``errors`` maps each file that failed to why; ``warnings`` are skipped lines;
    ``unsupported``: files found in the given directories whose type dca does not load (left out, not errors)."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    chunks_added: int = 0
    chunks_reused: int = 0
    seconds: float = 0.0
    cancelled: bool = False


@dataclass
class StoreInfo:
    """Counts and sizes of a store (``dca rag info``); ``pending``: vectors embedded by an interrupted ingest for
    files not stored yet, which the next ingest reuses."""

    path: str
    version: int
    embedder: str
    dim: int
    index_type: str
    files: int
    documents: int
    chunks: int
    bytes_on_disk: int
    chunking: dict
    pending: int = 0


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class Store:
    """A RAG store directory (see the module docstring for its format).

    Use :meth:`open` for an existing store and :meth:`create` (or ``open(..., create=True)``) for a new one.

    Args:
        path: the store directory.
        embedder: the embedder; it must match the one recorded in the manifest.
        config: settings for a new store; an existing store keeps the ones in its manifest.
        create: make the store if the directory has none.

    Raises:
        StoreError: no store at ``path`` (and not ``create``), a store of another format version, a
            corrupt manifest or database, or a store built with another embedder.
    """

    def __init__(self, path: str | Path, embedder: Embedder, *, config: StoreConfig | None = None,
                 create: bool = False):
        self.path = Path(path)
        self.embedder = embedder
        self._lock = threading.RLock()
        self._index = None
        self._backend_checked = False
        self.reranker = None  # a dca.rag.rerank.CrossEncoder, loaded by the first search with rerank
        manifest_path = self.path / MANIFEST
        for name in STORE_FILES:  # temporaries left by a process killed mid-write
            remove_stale_temporaries(self.path / name)
        if manifest_path.exists():
            self.manifest = self._read_manifest(manifest_path)
            self._check_embedder()
            self.config = StoreConfig(**{**asdict(config or StoreConfig()), **self.manifest["chunking"]})
        elif create:
            if self.path.exists() and any(self.path.iterdir()):
                raise StoreError(f"{self.path} exists and is not a dca store; choose an empty or new --store-dir")
            self.path.mkdir(parents=True, exist_ok=True)
            self.config = config or StoreConfig()
            self.manifest = {
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "embedder": {"name": embedder.name, "dim": None, "backend": backend_of(embedder)},
                "chunking": asdict(self.config),
                "index": {"type": "flat", "generation": 0, "vectors": 0},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        else:
            raise StoreError(f"no dca store at {self.path}; "
                             f"create one with: dca rag ingest PATH --store-dir {self.path}")
        try:
            self._db = sqlite3.connect(self.path / DATABASE, check_same_thread=False)
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path / DATABASE}: corrupt store database ({e}); "
                             "re-ingest into a new --store-dir") from e
        if not manifest_path.exists():
            self._write_manifest()

    @classmethod
    def open(cls, path: str | Path, embedder: Embedder, **kwargs) -> Store:
        """Open the store at ``path`` (see the class for arguments and errors)."""
        return cls(path, embedder, **kwargs)

    @classmethod
    def create(cls, path: str | Path, embedder: Embedder, config: StoreConfig | None = None) -> Store:
        """Open the store at ``path``, creating it if needed."""
        return cls(path, embedder, config=config, create=True)

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- manifest ---------------------------------------------------------------------------------

    def _read_manifest(self, path: Path) -> dict:
        try:
            manifest = read_manifest(path, STORE_FORMAT)
            if manifest is None:
                raise ManifestError(path, "it was removed while the store was opened")
        except ManifestError as e:
            raise StoreError(f"{path}: unreadable store manifest ({e.reason}); re-ingest into a new --store-dir") from e
        if manifest.get("version") != STORE_VERSION:
            raise StoreError(
                f"{self.path}: store format version {manifest.get('version')!r}, this dca reads version "
                f"{STORE_VERSION}; rebuild it with: dca rag ingest PATH --store-dir NEW_DIR"
            )
        return manifest

    def _check_embedder(self) -> None:
        want = self.manifest["embedder"]["name"]
        if want != self.embedder.name:
            raise StoreError(
                f"{self.path} was built with embedder {want!r}, but this run uses {self.embedder.name!r}; "
                f"use --embedder for {want!r} or ingest into a new --store-dir"
            )

    def check_embedder(self, samples: int = 8, min_cosine: float = AGREEMENT_MIN_COSINE) -> float | None:
        """When this run embeds through another backend than the one that built the store (llama.cpp and
        sentence-transformers, the same model), check that it gives the stored vectors: up to ``samples`` stored
        chunks, spread over the store, are embedded again and compared.

        Returns:
            the lowest cosine found, or None when the backends are the same or the store is empty.

        Raises:
            StoreError: a cosine below ``min_cosine`` (the message names both backends and how to choose one).
        """
        built = self.manifest["embedder"].get("backend", "sentence-transformers")
        now = backend_of(self.embedder)
        agrees = self.manifest["embedder"].get("agrees", {})
        if built == now or now in agrees:  # the same backend, or checked once and recorded
            return agrees.get(now)
        rows = self._db.execute("SELECT text, vector FROM chunks WHERE id IN (SELECT id FROM chunks ORDER BY "
                                "(id * 7919) % 104729 LIMIT ?)", (samples,)).fetchall()
        if not rows:
            return None
        stored = np.stack([np.frombuffer(v, dtype=np.float32) for _, v in rows])
        fresh = self.embedder.embed([t for t, _ in rows])
        worst = float(np.min(np.sum(stored * fresh, axis=1)))
        if worst < min_cosine:
            raise StoreError(
                f"{self.path} was built by the {built} backend; this run embeds through {now}, whose vectors of the "
                f"same chunks differ (cosine {worst:.4f} < {min_cosine}); search it with {built} "
                f"({BACKEND_ENV}={built}) or re-ingest into a new --store-dir")
        log.debug("%s: %s vectors agree with the stored %s ones (min cosine %.6f)", self.path, now, built, worst)
        self.manifest["embedder"]["agrees"] = {**agrees, now: round(worst, 6)}
        try:
            self._write_manifest()
        except OSError:  # a read-only store: checked again next time
            pass
        return worst

    def _agreed(self) -> None:
        if not self._backend_checked:
            self.check_embedder()
            self._backend_checked = True

    def _write_manifest(self) -> None:
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_text(self.path / MANIFEST, json.dumps(self.manifest, indent=2) + "\n")

    def _generation(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    # -- dense index ------------------------------------------------------------------------------

    def _vectors(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self._db.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
        if rows and not self.manifest["embedder"]["dim"]:  # crashed before the manifest recorded dim
            self.manifest["embedder"]["dim"] = len(rows[0][1]) // 4
        dim = self.manifest["embedder"]["dim"] or 0
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return ids, vecs

    def _rebuild_index(self) -> None:
        ids, vecs = self._vectors()
        kind = vindex.index_type_for(len(ids), self.config.hnsw_threshold)
        self._index = vindex.build_index(ids, vecs, kind) if self.manifest["embedder"]["dim"] else None
        if self._index is not None:
            vindex.write_index(self._index, self.path / INDEX)
        self.manifest["index"] = {"type": kind, "generation": self._generation(), "vectors": int(len(ids))}
        self._write_manifest()

    def _dense_index(self):
        with self._lock:
            if self._generation() == 0:
                return None  # nothing ingested yet
            if self.manifest["index"]["generation"] != self._generation() or not (self.path / INDEX).exists():
                log.warning("%s: dense index is stale (interrupted ingest?); rebuilding it", self.path)
                self._rebuild_index()
            elif self._index is None:
                try:
                    self._index = vindex.read_index(self.path / INDEX)
                except RuntimeError as e:  # faiss's error for a damaged file; the vectors are in SQLite
                    log.warning("%s: unreadable dense index (%s); rebuilding it", self.path / INDEX, e)
                    self._rebuild_index()
            return self._index

    # -- ingest -----------------------------------------------------------------------------------

    def ingest(
        self,
        paths: Iterable[str | Path],
        *,
        progress: ProgressFn | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> IngestReport:
        """Load, chunk, embed and index files; re-ingesting skips unchanged files.

        A file whose SHA-256 is unchanged is skipped; a changed file's chunks are replaced (chunks
        whose text is unchanged keep their stored vectors). A file that fails to load is reported in
        ``errors`` and whatever the store held for it is kept. New chunks are embedded in windows of
        ``config.window_chunks`` whose vectors are committed at once, and each file is committed as soon
        as all its vectors exist, so an interrupted ingest resumes where it stopped.

        Args:
            paths: files and directories (walked recursively for supported types).
            progress: called with a :class:`~dca.progress.Progress` (job ``ingest``, unit ``chunks``: the chunks to
                embed, those whose text is already stored not counted; metrics ``files_done``, ``files_total``)
                after each embedded window.
            cancel: polled between windows; when it returns True the ingest stops after the current
                window, with ``cancelled=True`` in the report and the unfinished files left out of
                ``added``/``updated``.

        Returns:
            the :class:`IngestReport`.
        """
        t0 = time.perf_counter()
        self._agreed()
        emit = emitter(progress)
        report = IngestReport()
        pending: list[tuple[Path, str, int, list, list]] = []  # (path, sha, size, documents, chunks)
        files: list[Path] = []
        unsupported: list[Path] = []
        for given in paths:  # one missing path must not drop the others
            try:
                files += iter_files([given], unsupported)
            except LoaderError as e:
                report.errors[e.path] = e.reason
        files = list(dict.fromkeys(files))
        report.unsupported = sorted(map(str, dict.fromkeys(unsupported)))
        with self._lock:
            known = dict(self._db.execute("SELECT path, sha256 FROM files").fetchall())
        for path in files:
            key = str(path)
            try:
                sha = sha256_file(path)
                if known.get(key) == sha:
                    report.unchanged.append(key)
                    continue
                docs, problems = load_file(path)
            except LoaderError as e:
                report.errors[e.path] = e.reason
                continue
            except OSError as e:
                report.errors[key] = f"cannot read file ({e.strerror or e})"
                continue
            report.warnings.extend(problems)
            chunks = [(doc, c) for doc in docs for c in chunk_document(
                doc, max_tokens=self.config.chunk_tokens, overlap_tokens=self.config.overlap_tokens)]
            pending.append((path, sha, path.stat().st_size, docs, chunks))
            (report.updated if key in known else report.added).append(key)

        # New chunk texts are embedded in windows; each window's vectors are committed to the `pending`
        # table at once, and a file's rows are replaced as soon as all its vectors exist. An interrupted
        # ingest so loses at most one window of embedding work, however large its files.
        items = [(p, [_text_hash(c.text) for _, c in p[4]]) for p in pending]
        vectors = self._known_vectors({h for _, hashes in items for h in hashes})
        todo: dict[str, str] = {}
        for p, hashes in items:
            for h, (_, c) in zip(hashes, p[4]):
                if h not in vectors:
                    todo.setdefault(h, c.text)
        work = list(todo.items())
        report.chunks_reused = sum(len(h) for _, h in items) - len(work)
        committed = 0
        try:
            committed = self._commit_ready(items, vectors, committed)
            for start in range(0, len(work), self.config.window_chunks):
                part = work[start:start + self.config.window_chunks]
                blobs = dict(zip((h for h, _ in part), self._embed([t for _, t in part])))
                with self._lock, self._db:
                    self._db.executemany("INSERT OR REPLACE INTO pending VALUES (?, ?)", blobs.items())
                vectors.update(blobs)
                report.chunks_added += len(part)
                committed = self._commit_ready(items, vectors, committed)
                emit(Progress("ingest", phase="embedding", done=start + len(part), total=len(work), unit="chunks",
                              metrics={"files_done": committed, "files_total": len(items)}))
                if cancel is not None and start + len(part) < len(work) and cancel():
                    report.cancelled = True
                    break
            if not report.cancelled:
                with self._lock, self._db:
                    self._db.execute("DELETE FROM pending")
        finally:
            if committed:
                with self._lock:
                    self._rebuild_index()
        unfinished = {str(p[0]) for p, _ in items[committed:]}
        report.added = [f for f in report.added if f not in unfinished]
        report.updated = [f for f in report.updated if f not in unfinished]
        report.seconds = time.perf_counter() - t0
        return report

    def _known_vectors(self, hashes: set[str]) -> dict[str, bytes]:
        """Vectors already stored (in chunks, or embedded by an interrupted ingest) for these text hashes."""
        found: dict[str, bytes] = {}
        wanted = list(hashes)
        with self._lock:
            for table in ("chunks", "pending"):
                for start in range(0, len(wanted), 500):
                    part = wanted[start:start + 500]
                    q = f"SELECT hash, vector FROM {table} WHERE hash IN ({','.join('?' * len(part))})"
                    found.update(self._db.execute(q, part).fetchall())
        return found

    def _embed(self, texts: list[str]) -> list[bytes]:
        vecs = self.embedder.embed(texts)
        dim = self.manifest["embedder"]["dim"]
        if dim is not None and vecs.shape[1] != dim:
            raise StoreError(f"{self.path}: embedder returned {vecs.shape[1]}-d vectors, the store holds {dim}-d")
        self.manifest["embedder"]["dim"] = int(vecs.shape[1])
        return [v.tobytes() for v in np.asarray(vecs, dtype=np.float32)]

    def _commit_ready(self, items: list, vectors: dict[str, bytes], committed: int) -> int:
        """Replace, in one transaction, the rows of the files from ``committed`` on whose vectors all exist.

        Returns:
            the number of files of ``items`` committed so far.
        """
        ready = committed
        while ready < len(items) and all(h in vectors for h in items[ready][1]):
            ready += 1
        if ready == committed:
            return committed
        with self._lock, self._db:
            for (path, sha, size, docs, chunks), hashes in items[committed:ready]:
                self._delete_file(str(path))
                for (doc, c), h in zip(chunks, hashes):
                    cur = self._db.execute(
                        'INSERT INTO chunks (file, source, title, text, start, "end", hash, vector) '
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (str(path), doc.source, c.title, c.text, c.start, c.end, h, vectors[h]),
                    )
                    self._db.execute("INSERT INTO chunks_fts (rowid, title, text) VALUES (?, ?, ?)",
                                     (cur.lastrowid, c.title, c.text))
                self._db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                                 (str(path), sha, size, len(docs), len(chunks), time.time()))
            self._bump_generation()
        return ready

    def _delete_file(self, path: str) -> None:
        self._db.execute("DELETE FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE file = ?)", (path,))
        self._db.execute("DELETE FROM chunks WHERE file = ?", (path,))
        self._db.execute("DELETE FROM files WHERE path = ?", (path,))

    def _bump_generation(self) -> None:
        self._db.execute(
            "INSERT INTO meta VALUES ('generation', '1') "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )

    def remove(self, paths: Iterable[str | Path]) -> list[str]:
        """Drop files (or every file under a directory) from the store.

        Returns:
            the stored file paths that were removed (empty when none matched).
        """
        removed: list[str] = []
        with self._lock:
            stored = [r[0] for r in self._db.execute("SELECT path FROM files")]
            for p in paths:
                target = str(Path(p).expanduser().resolve())
                removed += [s for s in stored if s == target or s.startswith(target.rstrip("/") + "/")]
            if removed:
                with self._db:
                    for s in dict.fromkeys(removed):
                        self._delete_file(s)
                    self._bump_generation()
                self._rebuild_index()
        return list(dict.fromkeys(removed))

    # -- search -----------------------------------------------------------------------------------

    def search(self, query: str, k: int = 5, *, mode: SearchMode = "hybrid",
               candidates: int | None = None, lexical_weight: float | None = None,
               rerank: int = 0) -> list[SearchHit]:
        """Rank chunks for ``query``.

        ``hybrid`` fuses the dense and lexical rankings by a convex combination of their min-max normalized
        scores (:func:`~dca.rag.lexical.convex_fusion`; Bruch et al. 2023), the lexical one weighted
        :data:`~dca.rag.lexical.LEXICAL_WEIGHT` (0.6), the dense one 1 minus that: on SQuAD and on ObliQA it ranks
        above each of its parts, where reciprocal rank fusion fell below the lexical ranking on ObliQA.

        Args:
            query: the question or keywords.
            k: number of hits returned.
            mode: ``dense`` (FAISS, cosine), ``lexical`` (SQLite FTS5, BM25) or ``hybrid``.
            candidates: hits taken from each ranking before fusion; default ``max(4 * k, 40)``.
            lexical_weight: the lexical ranking's weight in ``hybrid``, in [0, 1]; None: LEXICAL_WEIGHT. Tune it
                for a corpus with benchmarks/retrieval.py.
            rerank: N > 0 reorders the first ``max(N, k)`` hits of ``mode`` by the cross-encoder
                (:class:`~dca.rag.rerank.CrossEncoder`, loaded on first use; ``self.reranker`` to give another)
                before the first ``k`` are taken; 0: none.

        Returns:
            up to ``k`` hits, best first.

        Raises:
            ConfigError: unknown mode, k < 1 or rerank < 0.
            MissingDependencyError, ModelError: ``rerank`` without onnxruntime or without a reranker model.
        """
        if mode not in ("dense", "lexical", "hybrid"):
            raise ConfigError(f"--mode must be dense, lexical or hybrid, got {mode!r}")
        if k < 1:
            raise ConfigError(f"-k must be >= 1, got {k}")
        if lexical_weight is not None and not 0.0 <= lexical_weight <= 1.0:
            raise ConfigError(f"--lexical-weight must be in [0, 1], got {lexical_weight}")
        if rerank < 0:
            raise ConfigError(f"--rerank must be >= 0, got {rerank}")
        if rerank:
            hits = self.search(query, max(rerank, k), mode=mode, candidates=candidates, lexical_weight=lexical_weight)
            if self.reranker is None:
                from .rerank import CrossEncoder

                self.reranker = CrossEncoder()
            logits = self.reranker.score(query, [h.text for h in hits])
            order = np.argsort(-logits, kind="stable")[:k]
            return [replace(hits[i], score=float(logits[i])) for i in order]  # the score is the reranker's
        n = candidates or max(4 * k, 40)
        self._agreed()
        qvec = self.embedder.embed([query], is_query=True)[0]
        rankings: list[list[tuple[int, float]]] = []
        if mode in ("dense", "hybrid"):
            ids, scores = vindex.search_index(self._dense_index(), qvec, n if mode == "hybrid" else k)
            rankings.append(list(zip(ids.tolist(), scores.tolist())))
        if mode in ("lexical", "hybrid"):
            rankings.append(self._lexical(query, n if mode == "hybrid" else k))
        if mode == "hybrid":
            ranked = convex_fusion(*rankings, LEXICAL_WEIGHT if lexical_weight is None else lexical_weight)[:k]
        else:
            ranked = rankings[0][:k]
        return self._hits(ranked, qvec)

    def _lexical(self, query: str, k: int) -> list[tuple[int, float]]:
        match = fts_query(query)
        if match is None:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? "
                "ORDER BY bm25(chunks_fts) LIMIT ?", (match, k)).fetchall()
        return [(cid, -score) for cid, score in rows]  # FTS5's bm25() is negated: lower is better

    def _hits(self, ranked: list[tuple[int, float]], qvec: np.ndarray) -> list[SearchHit]:
        if not ranked:
            return []
        ids = [cid for cid, _ in ranked]
        with self._lock:
            rows = self._db.execute(
                'SELECT id, text, title, source, file, start, "end", vector FROM chunks '
                f"WHERE id IN ({','.join('?' * len(ids))})", ids).fetchall()
        by_id = {r[0]: r for r in rows}
        hits = []
        for cid, score in ranked:
            r = by_id.get(cid)
            if r is None:
                continue
            sim = float(np.frombuffer(r[7], dtype=np.float32) @ qvec)
            hits.append(SearchHit(cid, r[1], r[2], r[3], r[4], r[5], r[6], float(score), sim))
        return hits

    # -- info -------------------------------------------------------------------------------------

    def info(self) -> StoreInfo:
        """Counts, sizes, embedder and index type of the store."""
        with self._lock:
            files, docs = self._db.execute("SELECT COUNT(*), COALESCE(SUM(documents), 0) FROM files").fetchone()
            chunks = self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
            pending = self._db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
        size = sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())
        return StoreInfo(
            path=str(self.path), version=self.manifest["version"], embedder=self.manifest["embedder"]["name"],
            dim=self.manifest["embedder"]["dim"] or 0, index_type=self.manifest["index"]["type"],
            files=files, documents=docs, chunks=chunks, bytes_on_disk=size, chunking=self.manifest["chunking"],
            pending=pending,
        )

    def files(self) -> list[str]:
        """Paths of the stored files, sorted."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT path FROM files ORDER BY path")]
