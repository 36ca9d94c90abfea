"""Citations: the passages given to the model (:class:`Source`), how they are quoted in the prompt, and
which of them an answer cites."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Source:
    """A passage given to the model.

    Attributes:
        number: its citation number, from 1.
        title, source, text: the chunk's title, document key and text.
        similarity: cosine similarity to the question.
        cited: the answer cites it.
        cited_by: ``"model"`` when the model wrote the marker, ``"attribution"`` when dca added it because
            an answer sentence restates the passage, None when not cited.
    """

    number: int
    title: str
    source: str
    text: str
    similarity: float
    cited: bool = False
    cited_by: str | None = None


_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 3 or w.isdigit()}


def resolve_citations(text: str, sources: tuple[Source, ...], *, question: str = "",
                      min_overlap: float = 0.6) -> tuple[str, tuple[Source, ...]]:
    """Mark the sources an answer cites; add markers for sentences that restate a passage uncited.

    Markers the model wrote (``[n]``, ``[n, m]``) count when ``n`` is a passage number. When the answer has
    none, each sentence whose new content words (longer than 3 letters, or numbers, and not in the
    question; at least 2) are at least ``min_overlap`` contained in one passage gets that passage's
    marker: post-hoc attribution, as in attribution evaluation of RAG answers (Rashkin et al. 2021,
    "Measuring Attribution in Natural Language Generation Models").

    Returns:
        (text with markers, sources with ``cited``/``cited_by`` set).
    """
    by_model = {int(n) for m in _MARKER.finditer(text) for n in m.group(1).split(",")} & {s.number for s in sources}
    by_attr: set[int] = set()
    if not by_model and sources and text.strip():
        asked = _content_words(question)
        words = {s.number: _content_words(s.text) for s in sources}
        out = []
        for sentence in _SENTENCE_END.split(text.strip()):
            sw = _content_words(sentence) - asked  # restating the question proves nothing
            best, score = None, 0.0
            for number, pw in words.items():
                overlap = len(sw & pw) / len(sw) if len(sw) >= 2 else 0.0
                if overlap > score:
                    best, score = number, overlap
            if best is not None and score >= min_overlap:
                by_attr.add(best)
                sentence = re.sub(r"([.!?]?)$", rf" [{best}]\g<1>", sentence, count=1)
            out.append(sentence)
        text = " ".join(out)
    marked = tuple(
        replace(s, cited=True, cited_by="model") if s.number in by_model
        else replace(s, cited=True, cited_by="attribution") if s.number in by_attr else s
        for s in sources
    )
    return text, marked


def format_passages(sources: tuple[Source, ...]) -> str:
    """Quote passages as numbered, delimited, untrusted material for the prompt.

    A passage cannot close its own delimiter: ``</passage`` inside it is escaped.
    """
    parts = []
    for s in sources:
        body = s.text.replace("</passage", "<\\/passage")
        title = s.title.replace('"', "'")
        parts.append(f'<passage number="{s.number}" title="{title}">\n{body}\n</passage>')
    return "\n".join(parts)
