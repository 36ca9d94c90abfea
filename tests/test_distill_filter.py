"""dca.distill.filter and ``dca distill filter``: one verdict per trace, real trace sets, the output contract."""

from __future__ import annotations

import json
import random
import sys
import zlib
from pathlib import Path

import pytest
from conftest import shared_file
from typer.testing import CliRunner

from dca.cli import app
from dca.distill.filter import REASONS, REPORT_FILES, FilterConfig, filter_traces
from dca.distill.importers import import_traces
from dca.distill.similarity import NgramIndex, approx_tokens, repetition
from dca.distill.traces import Trace, TraceWriter
from dca.errors import ConfigError, LoaderError, MissingDependencyError
from dca.grading import extract_answer, is_equivalent

runner = CliRunner()
_shared = shared_file


def _prose(seed: int, words: int = 300) -> str:
    """Reasoning-like filler whose word 4-grams do not repeat: made-up words from a seeded generator."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ren", "tu", "sa", "vor", "el", "qui", "dan", "pe", "zu", "ho", "ny"]
    return " ".join("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(words))


def _trace(id: str, *, sample: int = 0, gold: str | None = "7", answer: str = "\\boxed{7}", thinking: str | None = None,
           closed: bool = True, question: str | None = None, **kw) -> Trace:
    return Trace(id=id, sample=sample, question=question or f"Question {id}: how many apples are left?",
                 thinking=_prose(zlib.crc32(f"{id}#{sample}".encode())) if thinking is None else thinking,
                 answer=answer, gold=gold, closed=closed, **kw)


def _write(path: Path, traces: list[Trace]) -> Path:
    path.unlink(missing_ok=True)  # TraceWriter appends
    with TraceWriter(path) as w:
        w.write_all(traces)
    return path


def _run(tmp_path, traces, **kw):
    src = _write(tmp_path / "traces.jsonl", traces)
    cfg = FilterConfig(traces=[src], out=tmp_path / "kept.jsonl", **kw)
    report = filter_traces(cfg)
    return report, {(v.id, v.sample): v for v in report.verdicts}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _kept(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]


def test_qwen3_gsm8k_traces_keep_only_closed_correct_uncontaminated_ones(tmp_path):
    import_traces(_shared("r1style_traces_gsm8k_qwen3-30b-a3b.jsonl"), tmp_path / "t.jsonl")
    cfg = FilterConfig(traces=[tmp_path / "t.jsonl"], out=tmp_path / "kept.jsonl",
                       decontaminate=[_shared("gsm8k_test.jsonl")])
    report = filter_traces(cfg)
    verdicts = {v.id: v for v in report.verdicts}
    assert report.total == 100 and report.kept == 92
    assert {r: n for r, n in report.dropped.items() if n} == {"contaminated": 1, "truncated": 6, "wrong_answer": 1}
    assert verdicts["gsm8k_train_20"].reason == "contaminated" and "gsm8k_test.jsonl:633" in verdicts["gsm8k_train_20"].detail
    assert verdicts["gsm8k_train_59"].reason == "wrong_answer"  # extracts 85, gold 59
    rows = {r["id"]: r for r in _rows(_shared("r1style_traces_gsm8k_qwen3-30b-a3b.jsonl"))}
    kept = _kept(tmp_path)
    assert len(kept) == 92
    for record in kept:
        user, assistant = record["messages"]
        row = rows[record["id"]]
        assert user == {"role": "user", "content": row["question"]} and assistant["role"] == "assistant"
        assert assistant["content"].startswith("<think>\n") and assistant["content"].count("</think>") == 1
        assert "</think>" in row["raw_completion"] and record["gold"] == row["gold_answer"]
        assert is_equivalent(extract_answer(assistant["content"]), row["gold_answer"])


def test_openr1_truncated_traces_are_all_dropped(tmp_path):
    import_traces(_shared("r1style_traces_openr1math_qwen3-30b-a3b.jsonl"), tmp_path / "t.jsonl")
    report = filter_traces(FilterConfig(traces=[tmp_path / "t.jsonl"], out=tmp_path / "kept.jsonl"))
    rows = _rows(_shared("r1style_traces_openr1math_qwen3-30b-a3b.jsonl"))
    truncated = {r["id"] for r in rows if "</think>" not in r["raw_completion"]}
    assert {v.id for v in report.verdicts if v.reason == "truncated"} == truncated and len(truncated) == 42
    assert report.kept == 7 and report.dropped["wrong_answer"] == 5
    assert {r["id"] for r in _kept(tmp_path)}.isdisjoint(truncated)


def test_planted_gsm8k_test_question_is_removed_by_decontamination(tmp_path):
    train = _rows(_shared("gsm8k_train.jsonl"))[:10]
    planted = _rows(_shared("gsm8k_test.jsonl"))[9]  # line 10
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in train[:5] + [planted] + train[5:]))
    import_traces(src, tmp_path / "t.jsonl")
    report = filter_traces(FilterConfig(traces=[tmp_path / "t.jsonl"], out=tmp_path / "kept.jsonl",
                                        decontaminate=[_shared("gsm8k_test.jsonl")]))
    assert [v.id for v in report.verdicts if v.reason == "contaminated"] == ["train_5"]
    assert "gsm8k_test.jsonl:10" in report.verdicts[5].detail
    assert report.kept == 10 and all(v.kept for v in report.verdicts if v.id != "train_5")


def test_contamination_needs_a_shared_word_8gram(tmp_path):
    held = tmp_path / "test.jsonl"
    held.write_text(json.dumps({"question": "A farmer has 17 sheep and all but 9 run away. How many are left?"}) + "\n"
                    + json.dumps({"problem": "Compute 2+2."}) + "\n")
    traces = [
        _trace("eight", question="Tom says: a farmer has 17 sheep and ALL but 9 ran off today."),  # 8 words shared
        _trace("seven", question="Some farmer has 17 sheep and all but 8 run off."),  # 7 consecutive words at most
        _trace("short", question="compute 2 + 2"),  # under 8 words: must match a whole question
        _trace("short2", question="Compute 2 + 3."),
    ]
    _, v = _run(tmp_path, traces, decontaminate=[held])
    assert v["eight", 0].reason == "contaminated" and "test.jsonl:1" in v["eight", 0].detail
    assert v["short", 0].reason == "contaminated" and "test.jsonl:2" in v["short", 0].detail
    assert v["seven", 0].kept and v["short2", 0].kept


def test_exact_and_near_duplicates_of_kept_traces_are_dropped(tmp_path):
    text = _prose(1, 400)
    words = text.split()
    edited = " ".join(words[:200] + ["changed"] + words[201:])  # one word replaced
    traces = [
        _trace("q", sample=0, thinking=text),
        _trace("q", sample=1, thinking="  " + text.upper().replace(" ", "\n", 3)),  # same after case/space folding
        _trace("q", sample=2, thinking=edited),
        _trace("q", sample=3, thinking=_prose(2, 400)),
        _trace("r", sample=0, thinking=edited, gold="8"),  # wrong: never kept, so never a reference
        _trace("r", sample=1, thinking=_prose(3, 400)),
        _trace("r", sample=2, thinking=_prose(3, 400), question="A different question about pears, with other words."),
        _trace("s", thinking="", question="How many legs do three cats have in total?", answer="\\boxed{12}", gold="12"),
        _trace("t", thinking="", question="What is the product of four and three?", answer="\\boxed{12}", gold="12"),
    ]
    report, v = _run(tmp_path, traces)
    assert [v["q", i].reason for i in range(4)] == ["kept", "duplicate", "near_duplicate", "kept"]
    assert "q#0" in v["q", 1].detail and "q#0" in v["q", 2].detail
    assert [v["r", i].reason for i in range(3)] == ["wrong_answer", "kept", "near_duplicate"]  # a long response copied
    assert v["s", 0].kept and v["t", 0].kept  # the same short answer to different questions
    assert report.dropped["duplicate"] == 1 and report.dropped["near_duplicate"] == 2


def test_repetition_score_and_repetitive_traces(tmp_path):
    paragraph = _prose(3, 60)
    assert repetition(_prose(4, 500)) == 0.0 and repetition("too short") == 0.0
    assert repetition(" ".join([paragraph] * 4)) == pytest.approx(0.75, abs=0.02)
    traces = [_trace("loop", thinking=" ".join([paragraph] * 5)), _trace("once", thinking=paragraph)]
    _, v = _run(tmp_path, traces)
    assert v["loop", 0].reason == "repetitive" and v["loop", 0].repetition > 0.75
    assert v["once", 0].kept
    _, v = _run(tmp_path, traces, max_repetition=0.9, force=True)
    assert v["loop", 0].kept


def test_per_question_cap_input_order_or_shortest_first(tmp_path):
    lengths = {0: 300, 1: 100, 2: 500, 3: 200}
    traces = [_trace("q", sample=s, thinking=_prose(10 + s, n)) for s, n in lengths.items()]
    traces.insert(2, _trace("q", sample=4, thinking=_prose(20, 50), answer="\\boxed{8}"))  # shortest, but wrong
    traces.append(_trace("other", thinking=_prose(30, 400)))

    def kept_samples(**kw):
        _, v = _run(tmp_path, traces, force=True, **kw)
        assert v["q", 4].reason == "wrong_answer" and v["other", 0].kept
        assert all(x.reason in ("kept", "per_question_cap", "wrong_answer") for x in v.values())
        return sorted(s for (i, s), x in v.items() if i == "q" and x.kept)

    assert kept_samples() == [0, 1, 2, 3]
    assert kept_samples(max_per_question=1) == [0]
    assert kept_samples(max_per_question=1, prefer_shorter=True) == [1]
    assert kept_samples(max_per_question=2, prefer_shorter=True) == [1, 3]
    assert [r["sample"] for r in _kept(tmp_path) if r["id"] == "q"] == [1, 3]  # output keeps input order


def test_first_failing_check_decides_and_every_trace_gets_one_verdict(tmp_path):
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"question": "one two three four five six seven eight nine"}) + "\n")
    traces = [
        _trace("a", question="one two three four five six seven eight nine", gold=None, closed=False),
        _trace("b", gold=None, closed=False),
        _trace("c", closed=False, answer=""),
        _trace("d", answer="I cannot tell."),
        _trace("e", answer="\\boxed{6}"),
        _trace("f", tokens={"prompt": 10, "completion": 5000}),  # the teacher's count is used
        _trace("g", gold="1,000", answer="so \\boxed{1000}"),
    ]
    report, v = _run(tmp_path, traces, decontaminate=[held], max_tokens=4000)
    assert [v[k, 0].reason for k in "abcdefg"] == ["contaminated", "no_gold", "truncated", "no_answer", "wrong_answer",
                                                  "too_long", "kept"]
    assert v["f", 0].tokens == 5000 and v["g", 0].extracted == "1000"
    assert sum(report.dropped.values()) + report.kept == report.total == 7 and set(report.dropped) == set(REASONS)


def test_token_counter_callable(tmp_path):
    src = _write(tmp_path / "t.jsonl", [_trace("a", thinking="one two three", answer="\\boxed{7}"), _trace("b")])
    cfg = FilterConfig(traces=[src], out=tmp_path / "kept.jsonl", max_tokens=10)
    report = filter_traces(cfg, count_tokens=lambda text: len(text.split()))
    assert [(v.tokens, v.reason) for v in report.verdicts] == [(4, "kept"), (301, "too_long")]
    assert report.token_counter == "callable"


def test_output_files_and_refusal_to_overwrite(tmp_path):
    traces = [_trace("a"), _trace("b", closed=False)]
    src = _write(tmp_path / "traces.jsonl", traces)
    with open(src, "a", encoding="utf-8") as f:
        f.write("{broken\n")
    cfg = FilterConfig(traces=[src], out=tmp_path / "out" / "kept.jsonl")
    report = filter_traces(cfg)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["kept.jsonl", "kept.report"]
    assert sorted(p.name for p in cfg.report_dir.iterdir()) == sorted(REPORT_FILES)
    assert (cfg.report_dir / "lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    verdicts = [json.loads(line) for line in (cfg.report_dir / "verdicts.jsonl").read_text().splitlines()]
    assert [(x["id"], x["kept"], x["reason"], x["line"]) for x in verdicts] == [("a", True, "kept", 1), ("b", False, "truncated", 2)]
    saved = json.loads((cfg.report_dir / "report.json").read_text())
    assert saved["kept"] == 1 and saved["dropped"]["truncated"] == 1 and saved["tokens"]["kept"]["n"] == 1
    assert [(b["line"], "not JSON" in b["reason"]) for b in saved["bad_lines"]] == [(3, True)] == [(b.line, True) for b in report.bad]
    assert json.loads((cfg.report_dir / "config.json").read_text()) == cfg.to_dict()
    kept = [json.loads(line) for line in cfg.out.read_text().splitlines()]
    assert [(k["id"], k["sample"], k["gold"]) for k in kept] == [("a", 0, "7")]
    assert kept[0]["messages"][1]["content"].startswith("<think>\n") and kept[0]["messages"][1]["content"].endswith("\\boxed{7}")
    with pytest.raises(ConfigError, match="--force"):
        filter_traces(FilterConfig(traces=[src], out=cfg.out))
    cfg.out.unlink()
    with pytest.raises(ConfigError, match="verdicts.jsonl"):  # the report files alone are protected too
        filter_traces(FilterConfig(traces=[src], out=cfg.out))
    filter_traces(FilterConfig(traces=[src], out=cfg.out, force=True, report_dir=tmp_path / "r"))
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(REPORT_FILES)


def test_input_that_is_not_traces_says_to_import_it(tmp_path):
    src = tmp_path / "raw.jsonl"
    src.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    with pytest.raises(LoaderError, match="dca distill import"):
        filter_traces(FilterConfig(traces=[src], out=tmp_path / "kept.jsonl"))


@pytest.mark.parametrize("kw,flag", [
    ({"max_tokens": 0}, "--max-tokens"), ({"max_per_question": 0}, "--max-per-question"),
    ({"near_dup_threshold": 1.5}, "--near-dup-threshold"), ({"max_repetition": 0.0}, "--max-repetition"),
    ({"decontaminate": ["nowhere.jsonl"]}, "--decontaminate"), ({"traces": ["nowhere.jsonl"]}, "TRACES"),
])
def test_config_errors_name_the_flag(tmp_path, kw, flag):
    src = _write(tmp_path / "t.jsonl", [_trace("a")])
    with pytest.raises(ConfigError, match=flag):
        FilterConfig(**{"traces": [src], "out": tmp_path / "kept.jsonl", **kw})


def test_missing_datasketch_gives_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasketch", None)
    src = _write(tmp_path / "t.jsonl", [_trace("a")])
    with pytest.raises(MissingDependencyError, match=r"dca\[distill\]"):
        filter_traces(FilterConfig(traces=[src], out=tmp_path / "kept.jsonl"))
    assert not (tmp_path / "kept.jsonl").exists()


def test_cli_filter_help_and_run(tmp_path):
    result = runner.invoke(app, ["distill", "filter", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for flag in ("--decontaminate", "--max-tokens", "--max-per-question", "--prefer-shorter", "--near-dup-threshold",
                 "--report-dir", "--force", "-o"):
        assert flag in result.output, flag
    src = _write(tmp_path / "t.jsonl", [_trace("a", sample=0), _trace("a", sample=1), _trace("b", closed=False)])
    out = tmp_path / "kept.jsonl"
    args = ["distill", "filter", str(src), "-o", str(out), "--max-per-question", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "kept 1 of 3 traces" in result.output and "per_question_cap" in result.output and "truncated" in result.output
    assert len(out.read_text().splitlines()) == 1 and (tmp_path / "kept.report" / "verdicts.jsonl").exists()
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "--force" in result.output
    result = runner.invoke(app, args + ["--force", "--near-dup-threshold", "2"])
    assert result.exit_code == 1 and "--near-dup-threshold must be in (0, 1)" in result.output


def test_approx_tokens_tracks_qwen3_token_counts():
    """The 6 + 42 Qwen3 traces that stopped at the 4,000-token limit: the estimate stays within 0.8x to 1.05x."""
    rows = [r for name in ("r1style_traces_gsm8k_qwen3-30b-a3b.jsonl", "r1style_traces_openr1math_qwen3-30b-a3b.jsonl")
            for r in _rows(_shared(name)) if "</think>" not in r["raw_completion"]]
    assert len(rows) == 48
    ratios = sorted(approx_tokens(r["raw_completion"]) / 4000 for r in rows)
    assert 0.8 <= ratios[0] and ratios[-1] <= 1.05


def test_ngram_index_reports_where_the_shared_ngram_came_from():
    index = NgramIndex(8)
    index.add("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning.", "test.jsonl:1")
    assert index.find("Her ducks lay 16 eggs per day. She eats three for lunch.") == \
        'test.jsonl:1 ("ducks lay 16 eggs per day she eats")'  # the first shared 8-gram
    assert index.find("Janet's ducks lay 17 eggs per day. She eats four for breakfast.") is None


def test_tokenizer_counts_tokens(tmp_path):
    from dca.rag.embed import bundled_embedder_path

    path = bundled_embedder_path()
    if path is None:
        pytest.skip("the bundled MiniLM tokenizer is not installed")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    trace = _trace("a", thinking="Three apples and four pears.", answer="So \\boxed{7}.")
    src = _write(tmp_path / "t.jsonl", [trace])
    report = filter_traces(FilterConfig(traces=[src], out=tmp_path / "kept.jsonl", tokenizer=str(path)))
    expected = len(tok(f"{trace.thinking}\n{trace.answer}", add_special_tokens=False)["input_ids"])
    assert report.verdicts[0].tokens == expected and report.token_counter == f"tokenizer:{path}"
