"""Behaviour of dca.rag.loaders on real files written to tmp_path."""

from __future__ import annotations

import json
import sys

import pytest

from dca.errors import LoaderError, MissingDependencyError
from dca.rag.loaders import SUPPORTED_SUFFIXES, Document, iter_files, load_file


def _one(path) -> Document:
    docs, problems = load_file(path)
    assert problems == []
    assert len(docs) == 1
    return docs[0]


def _pdf(stream: bytes) -> bytes:
    """A minimal one-page PDF whose page content is ``stream``, with a correct xref table."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_txt_is_kept_with_normalised_newlines(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"\xef\xbb\xbffirst line\r\nsecond line\r\n")
    doc = _one(path)
    assert doc.text == "first line\nsecond line\n"  # BOM dropped, CRLF normalised
    assert doc.title == "notes"
    assert doc.source == doc.path == str(path.resolve())


def test_markdown_title_is_first_level_one_heading(tmp_path):
    path = tmp_path / "guide.md"
    text = "Intro without heading.\n\n## Not the title\n\n# Real Title\n\nBody.\n"
    path.write_text(text)
    doc = _one(path)
    assert doc.title == "Real Title"
    assert doc.text == text
    (tmp_path / "plain.markdown").write_text("no headings here\n")
    assert _one(tmp_path / "plain.markdown").title == "plain"


def test_html_drops_scripts_and_keeps_structure(tmp_path):
    path = tmp_path / "page.html"
    path.write_text(
        "<html><head><title>My  Page</title><style>body { color: red }</style>"
        "<script>var secret = 1;</script></head><body>"
        "<h1>Top</h1><p>Fish &amp; chips\n   cost &lt;5&gt; &#8364;.</p>"
        "<noscript>enable js</noscript><h2>Sub <em>part</em></h2>"
        "<ul><li>one</li><li>two</li></ul><pre>  keep\n    indent</pre><div>tail<br>next</div>"
        "</body></html>"
    )
    doc = _one(path)
    assert doc.title == "My Page"
    assert doc.text == (
        "# Top\n\nFish & chips cost <5> \u20ac.\n\n## Sub part\n\none\n\ntwo\n\n"
        "  keep\n    indent\n\ntail\n\nnext"
    )
    for hidden in ("secret", "color", "enable js"):
        assert hidden not in doc.text


def test_html_title_falls_back_to_h1_then_stem(tmp_path):
    (tmp_path / "a.htm").write_text("<body><h2>x</h2><h1>Heading One</h1><p>text</p></body>")
    assert _one(tmp_path / "a.htm").title == "Heading One"
    (tmp_path / "b.html").write_text("<p>just text</p>")
    assert _one(tmp_path / "b.html").title == "b"


def test_html_with_only_script_is_empty(tmp_path):
    path = tmp_path / "empty.html"
    path.write_text("<html><head><script>x = 1</script></head><body>  </body></html>")
    with pytest.raises(LoaderError, match="empty document"):
        load_file(path)


def test_jsonl_loads_good_records_and_reports_bad_lines(tmp_path):
    path = tmp_path / "kb.jsonl"
    lines = [
        json.dumps({"id": "a", "title": "Alpha", "text": "alpha text"}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"id": "b", "title": "no text"}),
        "",
        json.dumps({"text": "record without id"}),
        json.dumps({"id": "a", "text": "duplicate"}),
        json.dumps({"id": 7, "text": "numeric id", "title": "  "}),
    ]
    path.write_text("\n".join(lines) + "\n")
    docs, problems = load_file(path)
    resolved = str(path.resolve())
    assert [(d.source, d.title, d.text) for d in docs] == [
        (f"{resolved}#a", "Alpha", "alpha text"),
        (f"{resolved}#6", "6", "record without id"),
        (f"{resolved}#7", "7", "numeric id"),
    ]
    assert all(d.path == resolved for d in docs)
    assert [p.split(": ", 1)[0] for p in problems] == [f"{resolved}:{n}" for n in (2, 3, 4, 7)]
    assert "malformed JSON" in problems[0]
    assert "not a JSON object" in problems[1]
    assert "'text'" in problems[2]
    assert "duplicate id 'a'" in problems[3]
    assert all(p.endswith("; line skipped") for p in problems)


def test_jsonl_without_valid_records_fails(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"title": "x"}\n[1]\n')
    with pytest.raises(LoaderError, match="no valid records"):
        load_file(path)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(LoaderError, match="empty document"):
        load_file(tmp_path / "empty.jsonl")


def test_binary_file_is_refused(tmp_path):
    path = tmp_path / "image.txt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    with pytest.raises(LoaderError, match="binary file, not text"):
        load_file(path)


def test_latin1_text_names_file_offset_and_fix(tmp_path):
    path = tmp_path / "caf\u00e9.md"
    path.write_bytes("Caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    with pytest.raises(LoaderError) as info:
        load_file(path)
    message = str(info.value)
    assert info.value.path == str(path.resolve())
    assert message.startswith(str(path.resolve()))
    assert "not valid UTF-8 (byte 0xe9 at offset 3)" in message
    assert "iconv -f LATIN1 -t UTF-8" in message


def test_empty_and_whitespace_files_are_refused(tmp_path):
    for name, data in (("empty.txt", b""), ("blank.md", b"  \n\r\n\t\n")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(LoaderError, match="empty document"):
            load_file(tmp_path / name)


def test_unsupported_suffix_lists_supported_types(tmp_path):
    path = tmp_path / "sheet.xyz"
    path.write_text("a,b\n")
    with pytest.raises(LoaderError) as info:
        load_file(path)
    assert "unsupported file type '.xyz'" in info.value.reason
    assert all(suffix in info.value.reason for suffix in SUPPORTED_SUFFIXES)


def test_pdf_text_is_extracted(tmp_path):
    path = tmp_path / "paper.pdf"
    path.write_bytes(_pdf(b"BT /F1 24 Tf 72 720 Td (Hello PDF world) Tj ET"))
    doc = _one(path)
    assert doc.text.split() == ["Hello", "PDF", "world"]
    assert doc.title == "paper"


def test_pdf_without_text_is_reported_as_scanned(tmp_path):
    path = tmp_path / "scan.pdf"
    path.write_bytes(_pdf(b"0 0 m 100 100 l S"))
    with pytest.raises(LoaderError, match=r"no extractable text \(scanned PDF\?\)"):
        load_file(path)


def test_corrupt_pdf_is_reported(tmp_path):
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.4\nthis is not really a pdf\n")
    with pytest.raises(LoaderError, match=r"corrupt or unreadable PDF \(.+\)"):
        load_file(path)


def test_pdf_without_pypdf_gives_install_hint(tmp_path, monkeypatch):
    path = tmp_path / "paper.pdf"
    path.write_bytes(_pdf(b"BT /F1 24 Tf 72 720 Td (Hello) Tj ET"))
    monkeypatch.setitem(sys.modules, "pypdf", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'dca\[rag\]'"):
        load_file(path)


def test_directory_walk_is_sorted_and_skips_hidden_and_unsupported(tmp_path):
    for rel in ("b.txt", "a.md", "sub/c.html", "sub/deep/d.jsonl", "skip.xyz", ".hidden.txt",
                ".git/config.txt", "sub/.cache/e.md", "UPPER.PDF"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    explicit = tmp_path / "skip.xyz"
    found = list(iter_files([tmp_path, tmp_path / "a.md", explicit]))
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == ["UPPER.PDF", "a.md", "b.txt", "sub/c.html", "sub/deep/d.jsonl", "skip.xyz"]
    assert all(p.is_absolute() for p in found)


def test_missing_path_raises(tmp_path):
    with pytest.raises(LoaderError, match="no such file or directory"):
        list(iter_files([tmp_path / "nope"]))
