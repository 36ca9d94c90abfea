"""`dca eval` on the bundled GGUF killed with SIGKILL mid-run, then resumed: the same report as one uninterrupted run."""

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

QUESTIONS = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", 7),
    ("A box holds 6 eggs. How many eggs are in 5 boxes?", 30),
    ("Sara had 20 dollars and spent 8. How many dollars are left?", 12),
    ("There are 9 birds and 5 fly away. How many birds remain?", 4),
    ("A pen costs 2 dollars. How much do 7 pens cost?", 14),
    ("Ben reads 10 pages a day. How many pages does he read in 3 days?", 30),
]


def _cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dca.cli", "eval", "--task", "gsm8k", "--data", str(data), "--max-tokens", "40",
            "-o", str(out), *extra]


def test_sigkill_then_resume_gives_the_report_of_an_uninterrupted_run(tmp_path):
    bundled_gguf()
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": f"... #### {a}"}) + "\n" for q, a in QUESTIONS))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    full = subprocess.run(_cmd(data, tmp_path / "full"), env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_cmd(data, cut), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    predictions = cut / "predictions.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if predictions.exists() and predictions.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = predictions.read_bytes().count(b"\n")
    assert 2 <= done_before < len(QUESTIONS) and not (cut / "report.json").exists()

    resumed = subprocess.run(_cmd(data, cut, "--resume"), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a = EvalReport.from_dict(json.loads((tmp_path / "full" / "report.json").read_text()))
    b = EvalReport.from_dict(json.loads((cut / "report.json").read_text()))
    assert b.items == len(QUESTIONS) and b.comparable() == a.comparable()
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(len(QUESTIONS)))  # nothing redone, nothing lost
    full_rows = [json.loads(line) for line in (tmp_path / "full" / "predictions.jsonl").read_text().splitlines()]
    assert [r["output"] for r in rows] == [r["output"] for r in full_rows]
