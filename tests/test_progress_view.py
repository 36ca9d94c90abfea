"""The CLI's one progress renderer: plain lines in logs, the figures every job reports."""

from __future__ import annotations

import io

from rich.console import Console

from dca.cli.progress import ProgressView, describe_metrics
from dca.progress import Progress


def plain_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=False, width=40, soft_wrap=True), buf


def test_plain_lines_at_a_phase_start_then_every_so_often_and_at_the_end():
    console, buf = plain_console()
    with ProgressView(console, every_s=3600) as view:
        view(Progress("eval", done=0, total=500, unit="items"))
        for i in range(1, 4):
            view(Progress("eval", done=i, total=500, unit="items", metrics={"accuracy": 1 / i}))
        view(Progress("export", phase="write"))
        view(Progress("export", phase="quantize"))
        view(Progress("filter", event="skip"))
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("eval  0/500 items  0:00:0")
    assert lines[1].startswith("export  write") and lines[2].startswith("export  quantize")
    assert lines[3] == "filter: up to date, skipped" and len(lines) == 4  # long lines are not wrapped at 40


def test_the_last_state_is_printed_when_the_job_ends():
    console, buf = plain_console()
    with ProgressView(console, every_s=3600) as view:
        view(Progress("train", done=0, total=10, unit="steps"))
        view(Progress("train", done=10, total=10, unit="steps", metrics={"loss": 1.23456, "eta_s": 0.0}))
    last = buf.getvalue().splitlines()[-1]
    assert last.startswith("train  10/10 steps  loss 1.2346") and last.endswith("ETA 0:00:00")


def test_metrics_are_described_in_a_fixed_order():
    assert describe_metrics({"tokens_per_s": 210.4, "loss": 1.5, "eval_loss": 1.25, "lr": 1e-4}) == \
        "loss 1.5000  eval 1.2500  210 tok/s"
    assert describe_metrics({"em": 0.25, "failed": 0}) == "EM 25.0%"
    assert describe_metrics({"acceptance": 0.5, "accepted": 3, "judged": 6}) == "accepted 3/6 (50%)"


def test_a_log_gets_a_line_every_so_often_while_the_job_reports_nothing():
    import time

    console, buf = plain_console()
    with ProgressView(console, every_s=0.2) as view:
        view(Progress("export", phase="write"))
        time.sleep(0.75)  # a long phase without events: the heartbeat reprints it with its elapsed time
    lines = buf.getvalue().splitlines()
    assert len(lines) >= 3 and all(line.startswith("export  write") for line in lines)


def test_a_status_in_a_log_says_it_is_still_waiting_and_a_quick_one_prints_nothing(monkeypatch):
    import time

    from dca.cli import common

    console, buf = plain_console()
    monkeypatch.setattr(common, "err", console)
    with common.Status("sampling 8 answers", every_s=0.2):
        time.sleep(0.5)
    lines = buf.getvalue().splitlines()
    assert len(lines) >= 2 and all(line.startswith("sampling 8 answers ... ") for line in lines)
    with common.Status("loading the model", every_s=0.2):
        pass
    assert buf.getvalue().splitlines() == lines
