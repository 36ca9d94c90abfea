"""`dca eval` and `dca distill verifier` on the bundled GGUF killed with SIGKILL mid-run, then resumed: the same
output as one uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import bundled_gguf

from dca.eval.report import EvalReport

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")]

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
QUESTIONS = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", 7),
    ("A box holds 6 eggs. How many eggs are in 5 boxes?", 30),
    ("Sara had 20 dollars and spent 8. How many dollars are left?", 12),
    ("There are 9 birds and 5 fly away. How many birds remain?", 4),
    ("A pen costs 2 dollars. How much do 7 pens cost?", 14),
    ("Ben reads 10 pages a day. How many pages does he read in 3 days?", 30),
]


def _gsm8k_file(tmp_path: Path) -> Path:
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": f"... #### {a}"}) + "\n" for q, a in QUESTIONS))
    return data


def _kill_after_two_lines(cmd: list[str], lines: Path) -> int:
    """Start ``cmd``, SIGKILL it once ``lines`` holds two complete lines; the lines it had written by then."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if lines.exists() and lines.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return lines.read_bytes().count(b"\n")


def _cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dca.cli", "eval", "--task", "gsm8k", "--data", str(data), "--max-tokens", "40",
            "-o", str(out), *extra]


def test_sigkill_then_resume_gives_the_report_of_an_uninterrupted_run(tmp_path):
    bundled_gguf()
    data = _gsm8k_file(tmp_path)
    full = subprocess.run(_cmd(data, tmp_path / "full"), env=ENV, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr

    cut = tmp_path / "cut"
    predictions = cut / "predictions.jsonl"
    done_before = _kill_after_two_lines(_cmd(data, cut), predictions)
    assert 2 <= done_before < len(QUESTIONS) and not (cut / "report.json").exists()

    resumed = subprocess.run(_cmd(data, cut, "--resume"), env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a = EvalReport.from_dict(json.loads((tmp_path / "full" / "report.json").read_text()))
    b = EvalReport.from_dict(json.loads((cut / "report.json").read_text()))
    assert b.items == len(QUESTIONS) and b.comparable() == a.comparable()
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(len(QUESTIONS)))  # nothing redone, nothing lost
    full_rows = [json.loads(line) for line in (tmp_path / "full" / "predictions.jsonl").read_text().splitlines()]
    assert [r["output"] for r in rows] == [r["output"] for r in full_rows]


def _verifier_cmd(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "dca.cli", "distill", "verifier", str(data), "-o", str(out), "--samples", "3",
            "--max-tokens", "40"]


def test_verifier_data_killed_then_resumed_has_each_question_once_and_the_same_samples(tmp_path):
    bundled_gguf()
    data = _gsm8k_file(tmp_path)
    full = subprocess.run(_verifier_cmd(data, tmp_path / "full"), env=ENV, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr

    cut = tmp_path / "cut"
    samples = cut / "samples.jsonl"
    assert 2 <= _kill_after_two_lines(_verifier_cmd(data, cut), samples) < len(QUESTIONS)
    assert not (cut / "orm.jsonl").exists()

    resumed = subprocess.run(_verifier_cmd(data, cut), env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted({r["id"] for r in rows}) and len(rows) == len(QUESTIONS)
    whole = [json.loads(x) for x in (tmp_path / "full" / "samples.jsonl").read_text().splitlines()]
    # each question's samples come from its own seed: the resumed file holds what one uninterrupted run drew
    assert {r["id"]: [s["answer"] for s in r["samples"]] for r in rows} == \
        {r["id"]: [s["answer"] for s in r["samples"]] for r in whole}
    assert (cut / "orm.jsonl").read_text() == (tmp_path / "full" / "orm.jsonl").read_text()
