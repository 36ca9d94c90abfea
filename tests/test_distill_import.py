"""dca.distill.importers and ``dca distill import``: real GSM8K and R1-style trace files, chat shapes, bad lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared_file
from typer.testing import CliRunner

from dca.cli import app
from dca.distill.importers import detect_format, import_traces
from dca.distill.traces import (
    TraceWriter,
    atomic_trace_writer,
    read_traces,
    to_messages,
)
from dca.errors import ConfigError, LoaderError
from dca.grading import extract_answer, is_equivalent

runner = CliRunner()
_shared = shared_file


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def test_all_gsm8k_train_solutions_become_boxed_worked_answers(tmp_path):
    src = _shared("gsm8k_train.jsonl")
    report = import_traces(src, tmp_path / "t.jsonl")
    traces = read_traces(tmp_path / "t.jsonl")
    rows = _rows(src)
    assert report.written == len(traces) == len(rows) == 7473
    assert report.formats == {"gsm8k": 7473} and report.bad == [] and report.closed == report.with_gold == 7473
    for i, (row, t) in enumerate(zip(rows, traces)):
        gold = row["answer"].split("####")[-1].strip()
        assert t.id == f"gsm8k_train_{i}" and t.sample == 0 and t.question == row["question"]
        assert t.gold == gold and t.thinking == "" and t.closed
        assert "<<" not in t.answer and ">>" not in t.answer and "####" not in t.answer
        assert t.answer.endswith(f"\\boxed{{{gold}}}")
        assert is_equivalent(extract_answer(t.answer), t.gold), t.id
        assert t.teacher["kind"] == "import"
    # the calculator notes go, their results stay: "48/2 = <<48/2=24>>24 clips" -> "48/2 = 24 clips"
    assert traces[0].answer.splitlines()[0] == "Natalia sold 48/2 = 24 clips in May."
    assert to_messages(traces[0])[1]["content"] == traces[0].answer  # no empty think block


def test_gsm8k_ids_match_the_reward_kit_traces_of_the_same_questions(tmp_path):
    import_traces(_shared("gsm8k_train.jsonl"), tmp_path / "t.jsonl")
    by_id = {t.id: t.question for t in read_traces(tmp_path / "t.jsonl")}
    for row in _rows(_shared("r1style_traces_gsm8k_qwen3-30b-a3b.jsonl")):
        assert by_id[row["id"]] == row["question"]


@pytest.mark.parametrize("name,n,closed", [
    ("r1style_traces_gsm8k_qwen3-30b-a3b.jsonl", 100, 94),
    ("r1style_traces_openr1math_qwen3-30b-a3b.jsonl", 54, 12),
    ("r1_traces_math_rasbt.jsonl", 10, 10),
])
def test_think_final_files_keep_thinking_answer_gold_and_closed_flags(tmp_path, name, n, closed):
    src = _shared(name)
    report = import_traces(src, tmp_path / "t.jsonl")
    traces = read_traces(tmp_path / "t.jsonl")
    rows = _rows(src)
    assert report.written == len(traces) == n and report.closed == closed and report.formats == {"think-final": n}
    for row, t in zip(rows, traces):
        complete = row["trace_complete"] in (True, "True", "true")
        assert t.closed == (complete and ("</think>" in row.get("raw_completion", "</think>")))
        assert (t.id, t.question, t.thinking, t.answer) == (row["id"], row["question"], row["think"].strip(), row["final"].strip())
        assert t.gold == row["gold_answer"] and t.teacher["name"] == row["teacher_model"]
        assert "raw_completion" not in t.meta and "think" not in t.meta
    if "openr1" in name:  # exactly the incomplete ones are open
        assert {t.id for t in traces if not t.closed} == {r["id"] for r in rows if "</think>" not in r["raw_completion"]}
        assert len({t.id for t in traces if not t.closed}) == 42
        assert all(t.answer == "" for t in traces if not t.closed)


def test_sharegpt_and_messages_records(tmp_path):
    src = _jsonl(tmp_path / "chat.jsonl", [
        {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "What is 2+3?"},
                           {"from": "gpt", "value": "<think>\n2 plus 3 is 5.\n</think>\n\nThe answer is \\boxed{5}."}],
         "gold": 5, "model": "r1"},
        {"conversations": [{"from": "human", "value": "What is 7*6?"}, {"from": "gpt", "value": "<think>7 times 6 is"}],
         "answer": "42"},
        {"messages": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "hmm"},
                      {"role": "user", "content": "Another?"},
                      {"role": "assistant", "content": "3", "reasoning_content": "2 was taken; 3 is prime."}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Half of 10?"}]},
                      {"role": "assistant", "content": "<|begin_of_thought|>10/2<|end_of_thought|>"
                                                       "<|begin_of_solution|>\\boxed{5}<|end_of_solution|>"}],
         "gold_answer": "5", "id": "q-half"},
    ])
    report = import_traces(src, tmp_path / "t.jsonl")
    a, b, c, d = read_traces(tmp_path / "t.jsonl")
    assert report.formats == {"sharegpt": 2, "messages": 2} and report.bad == []
    assert (a.question, a.thinking, a.answer, a.gold, a.closed) == ("What is 2+3?", "2 plus 3 is 5.", "The answer is \\boxed{5}.", "5", True)
    assert a.meta == {"system": "Be brief."} and a.teacher["name"] == "r1" and a.id == "chat_0"
    assert (b.thinking, b.answer, b.closed, b.gold) == ("7 times 6 is", "", False, "42")
    assert (c.question, c.answer, c.thinking, c.gold) == ("Name a prime.", "3", "2 was taken; 3 is prime.", None)
    assert (d.id, d.question, d.thinking, d.answer, d.gold) == ("q-half", "Half of 10?", "10/2", "\\boxed{5}", "5")
    assert to_messages(a)[1]["content"] == "<think>\n2 plus 3 is 5.\n</think>\n\nThe answer is \\boxed{5}."


def test_malformed_lines_are_reported_with_their_numbers_and_skipped(tmp_path):
    good = {"question": "1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"}
    src = _jsonl(tmp_path / "mixed.jsonl", [
        good,                                                        # 1
        "{not json",                                                 # 2
        "[1, 2]",                                                    # 3
        "",                                                          # 4 blank: ignored
        {"text": "a document"},                                      # 5 unknown shape
        {"question": "2+2?", "answer": "it is 4"},                   # 6 no #### line
        {"conversations": [{"from": "human", "value": "hi"}]},       # 7 no assistant turn
        {"question": 3, "answer": "#### 3"},                         # 8 question not a string
        good,                                                        # 9
    ])
    report = import_traces(src, tmp_path / "t.jsonl")
    assert [(b.line, b.path) for b in report.bad] == [(n, str(src)) for n in (2, 3, 5, 6, 7, 8)]
    reasons = {b.line: b.reason for b in report.bad}
    assert "not JSON" in reasons[2] and "unknown shape" in reasons[5] and "####" in reasons[6]
    assert "no assistant turn" in reasons[7] and '"question"' in reasons[8]
    traces = read_traces(tmp_path / "t.jsonl")
    assert report.written == 2 and report.lines == 8
    assert [(t.id, t.sample) for t in traces] == [("mixed_0", 0), ("mixed_8", 0)]  # ids from line numbers


def test_repeated_ids_get_increasing_samples(tmp_path):
    row = {"id": "q1", "question": "1+1?", "think": "one and one", "final": "\\boxed{2}", "gold_answer": "2"}
    src = _jsonl(tmp_path / "r.jsonl", [row, row, {**row, "id": "q2"}, row])
    import_traces(src, tmp_path / "t.jsonl")
    assert [(t.id, t.sample) for t in read_traces(tmp_path / "t.jsonl")] == [("q1", 0), ("q1", 1), ("q2", 0), ("q1", 2)]


def test_math_solutions_and_explicit_format(tmp_path):
    src = _jsonl(tmp_path / "math.jsonl", [
        {"problem": "What is $\\frac12+\\frac12$?", "solution": "It is $\\boxed{1}$.", "unique_id": "test/a/1.json"},
        {"problem": "Compute $2^3$.", "solution": "$2^3=8$, so $\\boxed{8}$.", "answer": "8", "level": "Level 1"},
    ])
    import_traces(src, tmp_path / "t.jsonl")
    a, b = read_traces(tmp_path / "t.jsonl")
    assert (a.id, a.gold, b.gold, b.meta) == ("test/a/1.json", "1", "8", {"level": "Level 1"})
    with pytest.raises(LoaderError, match="no line converts.*line 1: not a gsm8k record"):
        import_traces(src, tmp_path / "u.jsonl", fmt="gsm8k")
    assert not (tmp_path / "u.jsonl").exists()
    with pytest.raises(ConfigError, match="--format"):
        import_traces(src, tmp_path / "u.jsonl", fmt="csv")


def test_detect_format_by_keys():
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"messages": []}) == "messages"
    assert detect_format({"question": "q", "think": "t", "final": "f", "answer": "a"}) == "think-final"
    assert detect_format({"question": "q", "answer": "#### 1"}) == "gsm8k"
    assert detect_format({"problem": "p", "solution": "s"}) == "math"
    assert detect_format({"prompt": "p", "completion": "c"}) is None


def test_refuses_to_overwrite_without_force_and_leaves_no_temporary_file(tmp_path):
    src = _jsonl(tmp_path / "g.jsonl", [{"question": "1+1?", "answer": "#### 2"}])
    out = tmp_path / "t.jsonl"
    out.write_text("keep me\n")
    with pytest.raises(ConfigError, match="--force"):
        import_traces(src, out)
    assert out.read_text() == "keep me\n"
    import_traces(src, out, force=True)
    assert [t.gold for t in read_traces(out)] == ["2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.jsonl", "t.jsonl"]
    with pytest.raises(ConfigError, match="input file"):
        import_traces(src, src, force=True)


def test_atomic_trace_writer_leaves_the_old_file_when_the_block_fails(tmp_path):  # parsing: test_thinking.py
    path = tmp_path / "x.jsonl"
    with TraceWriter(path) as w:
        w.write({"n": 1})
    with pytest.raises(RuntimeError), atomic_trace_writer(path) as w:
        w.write({"n": 2})
        raise RuntimeError("boom")
    assert _rows(path) == [{"n": 1}] and [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]


def test_cli_import_reports_counts_and_skipped_lines(tmp_path):
    src = _jsonl(tmp_path / "g.jsonl", [{"question": "1+1?", "answer": "#### 2"}, "oops", {"question": "2+2?", "answer": "#### 4"}])
    out = tmp_path / "t.jsonl"
    result = runner.invoke(app, ["distill", "import", str(src), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 2 traces (2 gsm8k)" in result.output and f"{src}:2: not JSON" in result.output
    assert len(read_traces(out)) == 2
    result = runner.invoke(app, ["distill", "import", str(src), "-o", str(out)])
    assert result.exit_code == 1 and "--force" in result.output
    result = runner.invoke(app, ["distill", "import", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0 and all(w in result.output for w in ("--format", "think-final", "sharegpt", "--force", "-o"))
