"""The one renderer of :class:`dca.progress.Progress` events, used by every long command.

In a terminal: a rich progress bar (description, bar, ``done/total unit``, the job's figures, elapsed, ETA).
Elsewhere (a pipe, a log, CI): plain lines on stderr, one when a job or phase starts, then one every
:data:`PLAIN_EVERY_S` seconds (the latest state, its elapsed time counting on even while the job reports nothing),
and the last state when the job ends, so a log shows that work goes on.
"""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from ..progress import Progress as Event

# 9, not 10: the heartbeat thread wakes late when the job holds the GIL (10.8 s seen while transformers loaded a
# GGUF), and a log should get a line at least every 10 s
PLAIN_EVERY_S = 9.0


def hms(seconds: float) -> str:
    """``H:MM:SS`` of a duration."""
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _pct(v: float) -> str:
    return f"{v:.1%}"


# How each known metric is shown, in this order; others are not shown.
_SHOWN = (
    ("accuracy", lambda v, m: f"accuracy {_pct(v)}"),
    ("em", lambda v, m: f"EM {_pct(v)}"),
    ("loss", lambda v, m: f"loss {v:.4f}"),
    ("eval_loss", lambda v, m: f"eval {v:.4f}"),
    ("acceptance", lambda v, m: f"accepted {m.get('accepted', 0):.0f}/{m.get('judged', 0):.0f} ({v:.0%})"),
    ("tokens_per_s", lambda v, m: f"{v:,.0f} tok/s" if v >= 10 else f"{v:.1f} tok/s"),
    ("samples_per_s", lambda v, m: f"{v:.2f} samples/s"),
    ("failed", lambda v, m: f"{v:.0f} failed" if v else ""),
)


def describe_metrics(metrics: dict) -> str:
    """The figures of an event as one short text (``accuracy 3.0%  loss 1.2345  210 tok/s``)."""
    parts = [fmt(metrics[name], metrics) for name, fmt in _SHOWN if metrics.get(name) is not None]
    return "  ".join(p for p in parts if p)


class _EtaColumn(ProgressColumn):
    """The job's own estimate (``eta_s``) when it gives one, else rich's from the rate so far."""

    def render(self, task) -> Text:
        eta = task.fields.get("eta_s")
        if eta is None and task.total is not None:
            eta = task.time_remaining
        return Text("" if eta is None else f"ETA {hms(eta)}", style="progress.remaining")


class ProgressView:
    """A callback for a job's ``progress`` parameter that draws its events on ``console`` (stderr).

    Use as a context manager (the bar is removed or the last plain line written on exit)::

        with ProgressView(err) as view:
            report = run_eval(cfg, progress=view)

    A chain's ``skip`` events print ``STAGE: up to date, skipped``.
    """

    def __init__(self, console: Console, *, transient: bool = False, every_s: float = PLAIN_EVERY_S):
        self.console = console
        self.terminal = console.is_terminal
        self.every_s = every_s
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._key: tuple[str, str] | None = None
        self._last: Event | None = None
        self._last_at = 0.0
        self._printed_at = 0.0
        self._started_at = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        if not self.terminal and every_s > 0:
            self._beat = threading.Thread(target=self._heartbeat, name="dca-progress", daemon=True)
            self._beat.start()
        if self.terminal:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[count]}"), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), _EtaColumn(), console=console, transient=transient)

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the bar, or print the last state once more when it changed since the last plain line."""
        self._stop.set()
        if self._bar is not None:
            self._bar.stop()
        with self._lock:
            if self._bar is None and self._last is not None and self._printed_at < self._last_at:
                self._plain(self._last)
            self._last = None

    def _heartbeat(self) -> None:
        """Plain mode: reprint the latest state when nothing was printed for ``every_s`` seconds."""
        while not self._stop.wait(min(1.0, self.every_s)):
            with self._lock:
                if self._last is not None and time.monotonic() - self._printed_at >= self.every_s:
                    self._plain(self._last)

    def __call__(self, event: Event) -> None:
        if event.event == "skip":
            self._message(f"{event.job}: up to date, skipped")
            return
        with self._lock:
            key = (event.job, event.phase)
            new_phase = key != self._key or event.event == "start"
            if new_phase:
                self._started_at = time.monotonic()
            self._key = key
            self._last, self._last_at = event, time.monotonic()
            if self._bar is not None:
                self._draw(event, new_phase)
            elif new_phase or event.event == "done" or time.monotonic() - self._printed_at >= self.every_s:
                self._plain(event)

    def _message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(Text(text, style="dim"))
        else:
            self.console.print(Text(text))

    @staticmethod
    def _count(event: Event) -> str:
        if event.done is None:
            return ""
        total = "" if event.total is None else f"/{event.total}"
        return f"{event.done}{total} {event.unit}".rstrip()

    def _draw(self, event: Event, new_phase: bool) -> None:
        description = f"{event.job} {event.phase}".strip()
        fields = {"count": self._count(event), "info": describe_metrics(event.metrics),
                  "eta_s": event.metrics.get("eta_s")}
        if self._task is None or new_phase:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task(description, total=event.total, completed=event.done or 0, **fields)
        else:
            self._bar.update(self._task, description=description, total=event.total, completed=event.done or 0,
                             **fields)
        self._bar.start()

    def _plain(self, event: Event) -> None:
        parts = [event.job, event.phase, self._count(event), describe_metrics(event.metrics),
                 hms(time.monotonic() - self._started_at)]
        eta = event.metrics.get("eta_s")
        if eta is not None:
            parts.append(f"ETA {hms(eta)}")
        self.console.print(Text("  ".join(p for p in parts if p)))
        self._printed_at = time.monotonic()
