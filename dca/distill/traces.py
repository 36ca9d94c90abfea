"""dca's trace format: one reasoning trace per JSONL line, shared by generate, import, filter and train.

A trace (format ``dca-trace``, version 1) is a JSON object:

``id``        the question's id (str); traces of one question share it.
``sample``    the sample index for that question, from 0 (int); (``id``, ``sample``) is unique in a file.
``question``  the prompt text (str).
``gold``      the reference final answer, or null when the source has none.
``thinking``  the rationale, without think tags (str; "" when the source has none).
``answer``    the response after the thinking: the worked answer ending in the final answer (str).
``closed``    whether the thinking ended by itself (a closed think block, or a complete solution);
              False marks a trace truncated by a token limit.
``finish``    the teacher's finish reason: ``stop``, ``length`` or null (unknown, e.g. imported).
``teacher``   ``{"name", "kind", "params"}``: the model, its kind (``openai``, ``llama-cpp``,
              ``transformers``, ``import``) and the sampling parameters or import source.
``tokens``    ``{"prompt", "completion"}`` token counts as reported by the teacher, or null.
``meta``      free-form extras carried from the source (dict).

The reasoning goes into the assistant turn between think tags when the trace becomes training data
(:func:`to_messages`), as in DeepSeek-R1's distilled models (DeepSeek-AI 2025) and s1 (Muennighoff et al. 2025).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import LoaderError
from ..paths import atomic_path
from ..thinking import THINK_CLOSE, THINK_OPEN

TRACE_FORMAT = "dca-trace"
TRACE_VERSION = 1


@dataclass(frozen=True)
class Trace:
    """One reasoning trace; the fields are those of the JSONL format (see the module docstring)."""

    id: str
    sample: int
    question: str
    answer: str
    thinking: str = ""
    gold: str | None = None
    closed: bool = True
    finish: str | None = None
    teacher: dict = field(default_factory=dict)
    tokens: dict | None = None
    meta: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        """(id, sample): unique within a trace file."""
        return self.id, self.sample

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Trace:
        """Build a trace from a JSON object.

        Raises:
            ValueError: a required field (id, sample, question, answer) is missing or of the wrong type.
        """
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        for name, kind in (("id", str), ("question", str), ("answer", str)):
            if not isinstance(d.get(name), kind):
                raise ValueError(f'"{name}" must be a string')
        if not isinstance(d.get("sample"), int) or isinstance(d.get("sample"), bool) or d["sample"] < 0:
            raise ValueError('"sample" must be an integer >= 0')
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if known.get("thinking") is None:
            known["thinking"] = ""
        return cls(**known)


def to_messages(trace: Trace, *, system: str | None = None) -> list[dict]:
    """The chat messages of a trace for SFT: the question as the user turn, and the assistant turn holding
    ``<think>\\n{thinking}\\n</think>\\n\\n{answer}`` (the thinking block left out when there is none)."""
    content = trace.answer.strip()
    if trace.thinking.strip():
        content = f"{THINK_OPEN}\n{trace.thinking.strip()}\n{THINK_CLOSE}\n\n{content}"
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": trace.question}, {"role": "assistant", "content": content}]


@dataclass(frozen=True)
class BadLine:
    """A line of an input file that was not read: the file, its line number (from 1) and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def iter_jsonl(path: str | Path, bad: list[BadLine]) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each JSON-object line of ``path``; blank lines are ignored.

    Malformed lines (not JSON, not an object) are appended to ``bad`` with their line number and
    skipped, never silently lost.

    Raises:
        LoaderError: the file cannot be read as UTF-8 text.
    """
    path = Path(path)
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise LoaderError(path, f"cannot open it ({e.strerror or e})") from e
    with f:
        number = 0
        try:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    bad.append(BadLine(str(path), number, f"not JSON ({e})"))
                    continue
                if not isinstance(obj, dict):
                    bad.append(BadLine(str(path), number, f"expected a JSON object, got {type(obj).__name__}"))
                    continue
                yield number, obj
        except UnicodeDecodeError as e:
            raise LoaderError(path, f"line {number + 1} is not UTF-8 text ({e})") from e


def iter_traces(path: str | Path, bad: list[BadLine]) -> Iterator[tuple[int, Trace]]:
    """Yield (line number, trace) for each trace of a trace file; malformed lines go to ``bad`` and are skipped.

    Raises:
        LoaderError: the file cannot be read.
    """
    for number, obj in iter_jsonl(path, bad):
        try:
            yield number, Trace.from_dict(obj)
        except (ValueError, TypeError) as e:
            bad.append(BadLine(str(path), number, str(e)))


def read_traces(path: str | Path, bad: list[BadLine] | None = None) -> list[Trace]:
    """Read a trace file; malformed lines go to ``bad`` (with their line numbers) and are skipped.

    Raises:
        LoaderError: the file cannot be read.
    """
    return [trace for _, trace in iter_traces(path, [] if bad is None else bad)]


def drop_partial_line(path: Path) -> int:
    """Cut a last line that has no newline (left by a kill mid-write) off ``path``; returns bytes removed."""
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                end = pos - step + nl + 1
                break
            pos -= step
        else:
            end = 0
        if end < size:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
        return size - end


class TraceWriter:
    """Append traces to a JSONL file, one flushed and fsynced line per trace.

    Opening drops a partial last line left by a kill, so a resumed job appends after the last complete
    record; a record is on disk whole or not at all.

    Args:
        path: the JSONL file, created with its parent directories if absent.
        sync_each: fsync after every line (about 4 ms each); False flushes each line and fsyncs once on
            close, for files written whole and then renamed into place (:func:`atomic_trace_writer`).
    """

    def __init__(self, path: str | Path, *, sync_each: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_partial_line(self.path)
        self._sync_each = sync_each
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, trace: Trace | dict) -> None:
        record = trace.to_dict() if isinstance(trace, Trace) else trace
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        if self._sync_each:
            os.fsync(self._f.fileno())

    def write_all(self, traces: Iterable[Trace | dict]) -> int:
        n = 0
        for t in traces:
            self.write(t)
            n += 1
        return n

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def atomic_trace_writer(path: str | Path) -> Iterator[TraceWriter]:
    """A :class:`TraceWriter` on a temporary file beside ``path``, renamed onto ``path`` when the block ends.

    Readers see the old file or the complete new one, never a half-written one; if the block raises, the
    temporary file is removed and ``path`` is left as it was.
    """
    with atomic_path(path) as tmp:
        writer = TraceWriter(tmp, sync_each=False)
        try:
            yield writer
        finally:
            writer.close()
