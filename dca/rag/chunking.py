"""Split documents into overlapping, structure-aware chunks for embedding.

The splitter follows LlamaIndex's ``SentenceSplitter`` and ``MarkdownNodeParser``: text is cut preferably
at a section heading, then at a paragraph break, then at a sentence end, then between words, and each
chunk is labelled with the heading path of the section it starts in. Every chunk is an exact slice of the
document (``chunk.text == doc.text[chunk.start:chunk.end]``), so answers can cite character offsets.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from dca.errors import ConfigError
from dca.rag.loaders import Document

_TOKEN = re.compile(r"\w+|[^\w\s]")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+")
_ATX = re.compile(r" {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*")
_UNDERLINE = re.compile(r"([*=\-~])\1{2,}")
_FENCE = ("```", "~~~")


@dataclass(frozen=True)
class Chunk:
    """A contiguous slice of a document.

    Attributes:
        text: exactly ``document.text[start:end]``, without leading or trailing whitespace.
        start: character offset of the first character in ``Document.text`` (inclusive).
        end: character offset after the last character (exclusive).
        title: the document title followed by the heading path of the section the chunk starts in,
            joined with ``" > "``, e.g. ``"Guide > Install > Linux"``.
    """

    text: str
    start: int
    end: int
    title: str


def count_tokens(text: str) -> int:
    """Count approximate sub-word tokens: runs of word characters plus single punctuation marks.

    This approximates what WordPiece/BPE tokenizers (e.g. MiniLM's) produce for English prose without
    loading one; it undercounts rare long words, so budgets should keep some headroom below the
    embedder's limit.
    """
    return len(_TOKEN.findall(text))


def split_sentences(text: str) -> list[str]:
    """Split text into sentences at ``[.!?]`` (and closing quotes or brackets) followed by whitespace and a
    character that is not a lower-case letter (``"Stop!" she said.`` stays one sentence), and at paragraph
    breaks; each sentence stripped, empty ones dropped."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        start = 0
        for m in _SENTENCE_END.finditer(para):
            if m.end() < len(para) and para[m.end()].islower():
                continue
            out.append(para[start:m.end()].strip())
            start = m.end()
        out.append(para[start:].strip())
    return [s for s in out if s]


def chunk_document(doc: Document, *, max_tokens: int = 220, overlap_tokens: int = 32) -> list[Chunk]:
    """Split a document into chunks of at most ``max_tokens`` tokens (see :func:`count_tokens`).

    Blocks are paragraphs (separated by blank lines) and headings (Markdown ATX ``#`` lines, or
    reStructuredText/pydoc lines underlined with ``*``, ``=``, ``-`` or ``~``); headings inside fenced
    code are ignored. A chunk ends before a heading once it holds at least half the budget, otherwise
    at the last paragraph break, sentence end (``[.!?]`` then whitespace) or word boundary that fits,
    and only mid-word for a run of over ``max_tokens`` tokens without whitespace. The next chunk then
    starts up to ``overlap_tokens`` tokens earlier, at the first sentence start (else word start) in
    that window; there is no overlap across a section heading. Runs in O(n log n) in the text length.

    Args:
        doc: the document; its ``title`` heads every chunk title.
        max_tokens: token budget per chunk, at least 16.
        overlap_tokens: tokens repeated between consecutive chunks, ``0 <= overlap < max_tokens // 2``.

    Returns:
        chunks in document order; their spans cover every non-whitespace character of ``doc.text``.

    Raises:
        ConfigError: an option is out of range; the message names the CLI flag.
    """
    if max_tokens < 16:
        raise ConfigError(f"--chunk-tokens must be at least 16 (got {max_tokens})")
    if not 0 <= overlap_tokens < max_tokens // 2:
        raise ConfigError(
            f"--overlap-tokens must be between 0 and {max_tokens // 2 - 1} for --chunk-tokens {max_tokens}"
            f" (got {overlap_tokens})"
        )
    text = doc.text
    starts, ends = [], []
    for m in _TOKEN.finditer(text):
        starts.append(m.start())
        ends.append(m.end())
    n = len(starts)
    if not n:
        return []

    block_chars, block_titles, heading_flags, after_heading = _blocks(text, doc.title)
    block_toks = [bisect_left(starts, c) for c in block_chars]
    # Cut points as token indices (a cut before token k), from strongest to weakest. A cut right
    # after a heading would strand the heading at the end of a chunk, so those are left out.
    headings_all = {k for k, h in zip(block_toks, heading_flags) if h}
    headings = [k for k, h, a in zip(block_toks, heading_flags, after_heading) if h and not a]
    paragraphs = sorted({k for k, a in zip(block_toks, after_heading) if not a})
    sentences = sorted(set(block_toks) | {bisect_left(starts, m.end()) for m in _SENTENCE_END.finditer(text)})
    words = [k for k in range(1, n) if starts[k] > ends[k - 1]]  # gaps between tokens are whitespace

    half = max_tokens // 2
    chunks: list[Chunk] = []
    s = prev_e = 0
    while s < n:
        limit = s + max_tokens
        e = _first(headings, s + half, min(limit, n - 1))
        if e is None:
            if limit >= n:
                e = n
            else:
                e = (_last(paragraphs, s + half, limit) or _last(sentences, s + half, limit)
                     or _last(words, max(s, prev_e) + 1, limit) or limit)
        title = block_titles[max(bisect_right(block_chars, starts[s]) - 1, 0)] if block_chars else doc.title
        chunks.append(Chunk(text=text[starts[s]:ends[e - 1]], start=starts[s], end=ends[e - 1], title=title))
        if e >= n:
            break
        nxt = prev_e = e
        if overlap_tokens and e not in headings_all:
            lo = max(e - overlap_tokens, s + 1)
            nxt = _first(sentences, lo, e - 1) or _first(words, lo, e - 1) or e
        s = nxt
    return chunks


def _first(points: list[int], lo: int, hi: int) -> int | None:
    """The smallest point in ``[lo, hi]``, or None."""
    i = bisect_left(points, lo)
    return points[i] if i < len(points) and points[i] <= hi else None


def _last(points: list[int], lo: int, hi: int) -> int | None:
    """The largest point in ``[lo, hi]``, or None."""
    i = bisect_right(points, hi) - 1
    return points[i] if i >= 0 and points[i] >= lo else None


def _blocks(text: str, doc_title: str) -> tuple[list[int], list[str], list[bool], list[bool]]:
    """Find block starts in one pass over the lines.

    Returns:
        four parallel lists, one entry per block: start character offset (ascending), chunk title
        (document title plus heading path), whether the block is a heading, and whether it directly
        follows a heading.
    """
    chars: list[int] = []
    titles: list[str] = []
    is_heading: list[bool] = []
    after: list[bool] = []
    stack: list[tuple[int, str]] = []  # (level, heading text) of the enclosing sections
    underline_levels: dict[str, int] = {}  # reST ranks underline styles by order of first use
    in_block = in_fence = False
    prev_start, prev_line = -1, ""  # the previous line, when it is in the current block

    def title() -> str:
        parts = [h for _, h in stack]
        if parts and parts[0] == doc_title:  # a Markdown "# Title" is already the document title
            parts = parts[1:]
        return " > ".join([doc_title, *parts])

    def open_block(pos: int, heading: bool) -> None:
        after.append(bool(is_heading) and is_heading[-1])
        chars.append(pos)
        is_heading.append(heading)
        titles.append(title())

    def add_heading(pos: int, level: int, name: str) -> None:
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, name))
        open_block(pos, True)

    pos = 0
    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped:
            in_block = False
        elif stripped.startswith(_FENCE):
            in_fence = not in_fence
            if not in_block:
                open_block(pos, False)
                in_block = True
        elif not in_fence and (m := _ATX.fullmatch(line)):
            add_heading(pos, len(m.group(1)), m.group(2))
            in_block = False
        elif not in_fence and in_block and prev_start >= 0 and _UNDERLINE.fullmatch(stripped) \
                and not _UNDERLINE.fullmatch(prev_line):
            if chars[-1] == prev_start:  # the title line opened the block: it becomes the heading
                for column in (chars, titles, is_heading, after):
                    column.pop()
            level = underline_levels.setdefault(stripped[0], len(underline_levels) + 1)
            add_heading(prev_start, level, prev_line)
            in_block = False
        elif not in_block:
            open_block(pos, False)
            in_block = True
        prev_start, prev_line = (pos, stripped) if in_block else (-1, "")
        pos += len(line) + 1
    return chars, titles, is_heading, after
