"""Read files into :class:`Document` records: plain text, Markdown, HTML, PDF and JSONL.

Every loader returns whole-document text; splitting is :mod:`dca.rag.chunking`'s job. A file that cannot
be used at all raises :class:`~dca.errors.LoaderError` with a reason the user can act on; bad lines in a
JSONL file are reported as non-fatal problems so that one typo does not lose the rest of the file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from dca.errors import LoaderError, missing

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES: tuple[str, ...] = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".jsonl")

_SNIFF_BYTES = 8192  # NUL within the first 8 KiB marks a binary file, as git and grep decide
_MD_TITLE = re.compile(r"^ {0,3}# +(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Document:
    """One document ready for chunking.

    Attributes:
        source: stable key of the document in the store: the resolved absolute file path, or
            ``"ABS_PATH#<id>"`` for a JSONL record.
        path: the resolved absolute file path it came from.
        title: the file stem, or the HTML ``<title>`` / first Markdown ``# `` heading when present;
            for a JSONL record its ``title`` field, else its id.
        text: the full text with ``"\\n"`` line ends; never empty or whitespace-only.
    """

    source: str
    path: str
    title: str
    text: str


def iter_files(paths: Iterable[str | Path], unsupported: list[Path] | None = None) -> Iterator[Path]:
    """Expand files and directories into the files to load.

    An explicit file is yielded whatever its suffix, so that :func:`load_file` reports an unsupported
    one. A directory is walked recursively in sorted order, yielding only files with a suffix in
    :data:`SUPPORTED_SUFFIXES` and skipping hidden files and directories (names starting with ``"."``); the
    other files found there are appended to ``unsupported`` when it is given.

    Yields:
        resolved absolute paths, each at most once.

    Raises:
        LoaderError: a path does not exist.
    """
    seen: set[Path] = set()
    for given in paths:
        path = Path(given).expanduser().resolve()
        if not path.exists():
            raise LoaderError(given, "no such file or directory")
        if path.is_dir():
            found = []
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]  # prunes .git, .venv, ... in place
                for f in files:
                    if f.startswith("."):
                        continue
                    if Path(f).suffix.lower() in SUPPORTED_SUFFIXES:
                        found.append(Path(root, f))
                    elif unsupported is not None:
                        unsupported.append(Path(root, f))
            candidates = sorted(found)
        else:
            candidates = [path]
        for file in candidates:
            if file not in seen:
                seen.add(file)
                yield file


def load_file(path: str | Path) -> tuple[list[Document], list[str]]:
    """Load one file into documents.

    Text types are decoded as UTF-8 (a BOM is allowed) with ``"\\r\\n"`` normalised to ``"\\n"``.
    Markdown is kept as is; HTML is converted to paragraphs with ``#`` headings (see :class:`_HtmlText`);
    a PDF's pages are extracted with pypdf and joined with blank lines; each JSONL line is an object
    with ``text`` (required), ``id`` (default: the line number) and ``title`` (default: the id).

    Returns:
        ``(documents, problems)``: problems are non-fatal messages about skipped JSONL lines, formatted
        ``"{path}:{lineno}: {what}; line skipped"``.

    Raises:
        LoaderError: unsupported suffix, unreadable, binary, not UTF-8, empty, corrupt PDF, PDF without
            extractable text, or a JSONL file with no valid record.
        MissingDependencyError: a PDF was given and pypdf (the ``[rag]`` extra) is not installed.
    """
    path = Path(path).expanduser().resolve()
    suffix = path.suffix.lower()
    if not path.is_file():
        raise LoaderError(path, "is a directory; pass it to iter_files" if path.is_dir() else "no such file")
    if suffix not in SUPPORTED_SUFFIXES:
        shown = f"'{suffix}'" if suffix else "(none)"
        raise LoaderError(path, f"unsupported file type {shown}; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    if suffix == ".pdf":
        text, title, problems = _read_pdf(path), path.stem, []
    else:
        text = _read_text(path)
        if suffix == ".jsonl":
            return _read_jsonl(path, text)
        title, problems = path.stem, []
        if suffix in (".html", ".htm"):
            parser = _HtmlText()
            parser.feed(text)
            parser.close()
            text, title = parser.text(), parser.title() or path.stem
        elif suffix in (".md", ".markdown"):
            heading = _MD_TITLE.search(text)
            title = heading.group(1) if heading else path.stem
    if not text.strip():
        raise LoaderError(path, "empty document")
    logger.debug("loaded %s (%d chars)", path, len(text))
    return [Document(source=str(path), path=str(path), title=title, text=text)], problems


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LoaderError(path, f"cannot read ({e.strerror or e})") from e
    if b"\0" in data[:_SNIFF_BYTES]:
        raise LoaderError(path, "binary file, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        # utf-8-sig reports offsets after the BOM; report them in the file's own bytes
        offset = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        fixed = path.with_name(f"{path.stem}.utf8{path.suffix}")
        raise LoaderError(
            path,
            f"not valid UTF-8 (byte 0x{data[offset]:02x} at offset {offset}); convert it with: "
            f"iconv -f LATIN1 -t UTF-8 {shlex.quote(str(path))} > {shlex.quote(str(fixed))}",
        ) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise LoaderError(path, "empty document")
    return text


def _read_pdf(path: Path) -> str:
    try:
        import pypdf
    except ImportError as e:
        raise missing("pypdf", "rag") from e
    try:
        reader = pypdf.PdfReader(str(path))
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as e:  # pypdf raises many unrelated types on damaged files
        raise LoaderError(path, f"corrupt or unreadable PDF ({e})") from e
    text = "\n\n".join(p.strip() for p in pages if p.strip()).replace("\r\n", "\n")
    if not text:
        raise LoaderError(path, "no extractable text (scanned PDF?); run OCR on it first, e.g. ocrmypdf")
    return text


def _read_jsonl(path: Path, text: str) -> tuple[list[Document], list[str]]:
    docs: list[Document] = []
    skipped: list[tuple[int, str]] = []  # (line number, what was wrong)
    ids: set[str] = set()
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        what = None
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            what = f"malformed JSON ({e.msg} at column {e.colno})"
        else:
            if not isinstance(record, dict):
                what = f"not a JSON object (got {type(record).__name__})"
            elif not isinstance(record.get("text"), str) or not record["text"].strip():
                what = "missing or empty 'text'"
            else:
                rid = record.get("id")
                rid = str(lineno) if rid is None or isinstance(rid, (dict, list)) else str(rid)
                if rid in ids:
                    what = f"duplicate id '{rid}'"
        if what:
            skipped.append((lineno, what))
            continue
        ids.add(rid)
        title = record.get("title")
        title = title.strip() if isinstance(title, str) and title.strip() else rid
        body = record["text"].replace("\r\n", "\n")
        docs.append(Document(source=f"{path}#{rid}", path=str(path), title=title, text=body))
    if not docs:
        raise LoaderError(path, f"no valid records (line {skipped[0][0]}: {skipped[0][1]})")
    return docs, [f"{path}:{lineno}: {what}; line skipped" for lineno, what in skipped]


_SKIP = frozenset({"script", "style", "noscript", "head", "template"})
_BLOCK = frozenset("p div li ul ol dl dt dd tr br hr section article aside header footer nav main pre blockquote"
                   " table thead tbody figure figcaption form fieldset address details summary caption".split())
_HEADINGS = {f"h{i}": i for i in range(1, 7)}


class _HtmlText(HTMLParser):
    """HTML to paragraph text: headings become ``#`` lines, block elements end paragraphs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._paragraphs: list[str] = []
        self._buf: list[str] = []
        self._skip: list[str] = []  # open elements whose content is dropped
        self._title: list[str] | None = None  # collecting <title> while not None
        self._title_text = ""
        self._h1 = ""
        self._level = 0  # heading level being collected, 0 outside headings
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "title" and not self._title_text:  # the first one; <svg> may hold more
            self._title = []
        elif tag == "body":
            self._skip = [t for t in self._skip if t != "head"]  # </head> is optional in HTML
        elif tag in _SKIP:
            self._skip.append(tag)
        elif tag in _HEADINGS:
            self._flush()
            self._level = _HEADINGS[tag]
        elif tag in _BLOCK:
            self._flush()
            if tag == "pre":
                self._pre += 1
        elif tag in ("td", "th"):
            self._buf.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._title is not None:
            self._title_text = " ".join("".join(self._title).split())
            self._title = None
        elif tag in _SKIP:
            if tag in self._skip:
                while self._skip.pop() != tag:  # also closes elements left open inside it
                    pass
        elif tag in _HEADINGS:
            self._flush()
        elif tag in _BLOCK:
            self._flush()
            if tag == "pre" and self._pre:
                self._pre -= 1

    def handle_data(self, data: str) -> None:
        if self._title is not None:
            self._title.append(data)
        elif not self._skip:
            self._buf.append(data)

    def _flush(self) -> None:
        raw = "".join(self._buf)
        self._buf = []
        text = raw.strip("\n") if self._pre else " ".join(raw.split())
        if text.strip():
            if self._level:
                text = "#" * self._level + " " + " ".join(text.split())
                if self._level == 1 and not self._h1:
                    self._h1 = text[2:]
            self._paragraphs.append(text)
        self._level = 0

    def text(self) -> str:
        self._flush()
        return "\n\n".join(self._paragraphs)

    def title(self) -> str:
        return self._title_text or self._h1
