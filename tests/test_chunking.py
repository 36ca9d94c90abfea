"""Behaviour of dca.rag.chunking: exact spans, budgets, coverage, overlap, heading paths, speed."""

from __future__ import annotations

import random
import time

import pytest

from dca.errors import ConfigError
from dca.rag.chunking import Chunk, chunk_document, count_tokens
from dca.rag.loaders import Document


def _doc(text: str, title: str = "Doc") -> Document:
    return Document(source="/x", path="/x", title=title, text=text)


def _check_invariants(doc: Document, chunks: list[Chunk], max_tokens: int) -> None:
    """Exact slices, stripped, within budget, in order, and covering every non-whitespace char."""
    assert chunks
    covered = bytearray(len(doc.text))
    for chunk in chunks:
        assert chunk.text == doc.text[chunk.start:chunk.end]
        assert chunk.text and chunk.text == chunk.text.strip()
        assert count_tokens(chunk.text) <= max_tokens or len(chunk.text.split()) == 1
        covered[chunk.start:chunk.end] = b"\1" * (chunk.end - chunk.start)
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    assert all(a.start < b.start and a.end < b.end for a, b in zip(chunks, chunks[1:]))
    missed = [i for i, ch in enumerate(doc.text) if not covered[i] and not ch.isspace()]
    assert missed == []


def _prose(n_sentences: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = "the model reads local files and answers questions about them quickly offline".split()
    return " ".join(
        " ".join(rng.choice(words) for _ in range(rng.randint(4, 18))).capitalize() + rng.choice(".!?")
        for _ in range(n_sentences)
    )


def test_count_tokens_counts_words_and_punctuation():
    assert count_tokens("") == 0
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("don't  stop\n") == 4  # don ' t stop


def test_long_paragraph_is_split_with_overlap():
    doc = _doc(_prose(200))
    chunks = chunk_document(doc, max_tokens=64, overlap_tokens=12)
    _check_invariants(doc, chunks, 64)
    assert len(chunks) > 10
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end  # overlap
        assert count_tokens(doc.text[b.start:a.end]) <= 12
        assert doc.text[b.start - 1].isspace()  # starts at a word boundary, never mid-word
    # cuts fall at sentence ends wherever one is in reach
    assert sum(c.text[-1] in ".!?" for c in chunks[:-1]) >= len(chunks) - 2


def test_no_overlap_when_disabled():
    doc = _doc(_prose(100))
    chunks = chunk_document(doc, max_tokens=50, overlap_tokens=0)
    _check_invariants(doc, chunks, 50)
    assert all(b.start >= a.end for a, b in zip(chunks, chunks[1:]))


def test_short_paragraphs_are_packed_and_break_at_paragraphs():
    paragraphs = [_prose(2, seed=i) for i in range(30)]
    doc = _doc("\n\n".join(paragraphs))
    chunks = chunk_document(doc, max_tokens=120, overlap_tokens=0)
    _check_invariants(doc, chunks, 120)
    assert len(chunks) < len(paragraphs) / 2
    assert all(c.text in paragraphs or "\n\n" in c.text for c in chunks)
    assert all(doc.text[c.end:c.end + 2] in ("\n\n", "") for c in chunks)  # cut at paragraph ends


def test_markdown_heading_paths_in_titles():
    text = (
        "# Guide\n\nWelcome to the guide.\n\n"
        "## Install\n\n" + _prose(4, seed=0) + "\n\n"
        "### Linux\n\n" + _prose(12, seed=1) + "\n\n"
        "```sh\n# a shell comment, not a heading\necho hi\n```\n\n"
        "### macOS\n\n" + _prose(12, seed=2) + "\n\n"
        "## Usage\n\nRun it.\n"
    )
    doc = _doc(text, title="Guide")
    chunks = chunk_document(doc, max_tokens=40, overlap_tokens=4)
    _check_invariants(doc, chunks, 40)
    # every title is the heading path in force where the chunk starts
    for chunk in chunks:
        path: dict[int, str] = {}
        for line in text[:text.find("\n", chunk.start)].split("\n"):
            if line.startswith("#") and " " in line and "shell" not in line:
                marks, name = line.split(" ", 1)
                path = {k: v for k, v in path.items() if k < len(marks)} | {len(marks): name}
        assert chunk.title == " > ".join(["Guide", *list(path.values())[1:]])
    # sections of more than half a chunk start a new chunk at their heading
    heads = [c.text.split("\n", 1)[0] for c in chunks if c.text.startswith("#")]
    assert heads[:3] == ["# Guide", "### Linux", "### macOS"]  # "## Usage" may join a short tail
    assert [c.title for c in chunks if c.text.startswith("#")][1:3] == [
        "Guide > Install > Linux", "Guide > Install > macOS"]
    # a heading is never left dangling at the end of a chunk
    assert not any(c.text.rsplit("\n", 1)[-1].startswith("#") for c in chunks[:-1])


def test_underlined_headings_are_sections():
    text = (
        "Title\n*****\n\nIntro text here.\n\nFirst part\n==========\n\n" + _prose(20, seed=3)
        + "\n\nSecond part\n===========\n\nMore text.\n\nDetail\n------\n\nDeep text.\n"
    )
    doc = _doc(text, title="topic")
    chunks = chunk_document(doc, max_tokens=60, overlap_tokens=8)
    _check_invariants(doc, chunks, 60)
    titles = {c.title for c in chunks}
    assert "topic > Title > First part" in titles
    assert {"topic > Title > Second part", "topic > Title > Second part > Detail"} & titles
    last = chunks[-1]
    assert last.text.endswith("Deep text.")


def test_pydoc_topic_text():
    from pydoc_data.topics import topics

    text = topics["with"]
    doc = _doc(text, title="with")
    for max_tokens, overlap in ((220, 32), (64, 8), (16, 0)):
        chunks = chunk_document(doc, max_tokens=max_tokens, overlap_tokens=overlap)
        _check_invariants(doc, chunks, max_tokens)
        assert all(c.title.startswith('with > The "with" statement') for c in chunks)


def test_over_long_word_is_cut():
    word = "x." * 300  # 600 tokens and no whitespace
    doc = _doc(f"Start here. {word} End here.")
    chunks = chunk_document(doc, max_tokens=32, overlap_tokens=4)
    _check_invariants(doc, chunks, 32)


def test_large_text_is_fast():
    text = "\n\n".join(_prose(8, seed=i % 50) for i in range(4000))
    while len(text) < 500_000:
        text += "\n\n" + text
    doc = _doc(text[:500_000])
    t0 = time.perf_counter()
    chunks = chunk_document(doc)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"chunking 500 KB took {elapsed:.2f} s"
    assert chunks[-1].end >= len(doc.text.rstrip()) - 1
    assert all(count_tokens(c.text) <= 220 for c in chunks[:: max(1, len(chunks) // 50)])


def test_whitespace_only_text_gives_no_chunks():
    assert chunk_document(_doc(" \n\n\t ")) == []


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"max_tokens": 8}, "--chunk-tokens"),
        ({"max_tokens": 64, "overlap_tokens": 32}, "--overlap-tokens"),
        ({"overlap_tokens": -1}, "--overlap-tokens"),
    ],
)
def test_bad_options_name_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        chunk_document(_doc("some text"), **kwargs)


def test_split_sentences_at_sentence_ends_and_paragraph_breaks():
    from dca.rag.chunking import split_sentences

    text = 'It rained. "Stop!" she said. Was it 3.5 km?\n\nNew paragraph without a stop\nsame paragraph.  '
    assert split_sentences(text) == ["It rained.", '"Stop!" she said.', "Was it 3.5 km?",
                                     "New paragraph without a stop\nsame paragraph."]
    assert split_sentences("   ") == [] and split_sentences("one") == ["one"]
