"""``dca distill import``: convert existing solutions and reasoning traces into dca traces.

Input shapes (JSONL, one object a line), detected by key with ``fmt="auto"``, in this order:

``sharegpt``
    ``{"conversations": [{"from": "system"|"human"|"gpt", "value"}, ...]}`` (ShareGPT; also the
    ``user``/``assistant`` roles), as in Bespoke-Stratos and OpenThoughts.
``messages``
    ``{"messages": [{"role", "content"}, ...]}`` (OpenAI chat / TRL conversational).
``think-final``
    ``{"question", "think", "final", "gold_answer", "trace_complete", "raw_completion", "teacher_model"}``,
    the R1-style trace files of ``../shared/data`` (reward-kit, reasoning-from-scratch).
``gsm8k``
    ``{"question", "answer"}`` with the answer ending in ``#### N`` (Cobbe et al. 2021).
``math``
    ``{"problem", "solution", "answer"}`` as in MATH and MATH-500 (Hendrycks et al. 2021; Lightman et al. 2023).

How each becomes a trace (:class:`~dca.distill.traces.Trace`):

* gsm8k: the reference solution is a worked answer with no separate thinking, so ``thinking = ""`` and
  ``answer`` is the solution with the calculator notes ``<<48/2=24>>`` removed (kept with
  ``calculator_notes=True``, so that a student learns to write them for the ``calculator`` tool of
  :mod:`dca.tools`) and the ``#### N`` line replaced by ``\\boxed{N}`` on the last line; ``gold = N``,
  ``closed = True``. As training data the student learns to reason step by step in its answer and box the
  result, the format of ``dca eval --task gsm8k``'s prompt. Teacher ``{"name": "gsm8k-reference", "kind": "import"}``.
* math: the same for MATH solutions, which already end in ``\\boxed{}``: ``answer = solution``,
  ``gold = answer`` (else the solution's last ``\\boxed{}``), id from ``unique_id``. Teacher ``math-reference``.
* think-final: ``thinking = think``, ``answer = final``, ``gold = gold_answer``; ``closed`` is
  ``trace_complete`` and, when ``raw_completion`` is there, whether it closes ``</think>``. Without
  ``think``/``final`` the two are split out of ``raw_completion``. The teacher's name is ``teacher_model``;
  the other fields (``evaluation_score``, ``gsm8k_solution``, ...) go to ``meta``, except ``raw_completion``
  (it is ``think`` + ``final`` again).
* sharegpt / messages: the first user turn is the question and the last assistant turn the response, split
  at its think tags by :func:`dca.thinking.split_thinking` (an unclosed ``<think>`` gives
  ``closed = False``); DeepSeek-style ``reasoning_content`` beside the content, and the
  ``<|begin_of_thought|>`` tags of Bespoke-Stratos, are read as thinking too. ``gold`` comes from a top-level
  ``gold``, ``gold_answer`` or ``answer`` field when there is one.

Every trace gets ``id`` from the record's ``id`` (else ``{file stem}_{line - 1}``, so line 1 of
``gsm8k_train.jsonl`` is ``gsm8k_train_0``, the id the reward-kit traces use for the same question) and
``sample`` counting repeats of that id in the file from 0.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ConfigError, LoaderError
from ..progress import Progress, ProgressFn, emitter
from ..thinking import split_thinking
from .traces import (
    THINK_CLOSE,
    THINK_OPEN,
    BadLine,
    Trace,
    atomic_trace_writer,
    iter_jsonl,
)

__all__ = ["FORMATS", "ImportReport", "convert_record", "detect_format", "import_traces", "iter_imported"]

FORMATS = ("auto", "gsm8k", "math", "think-final", "sharegpt", "messages")

_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_GSM8K_FINAL = re.compile(r"\n?####[ \t]*([^\n]*)\s*$")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
          "model": "assistant", "system": "system"}
_THOUGHT_TAGS = (("<|begin_of_thought|>", "<|end_of_thought|>"),)  # Bespoke-Stratos / OpenThoughts
_SOLUTION_TAGS = ("<|begin_of_solution|>", "<|end_of_solution|>")
_DROPPED_FIELDS = {"raw_completion"}



@dataclass
class ImportReport:
    """What :func:`import_traces` did.

    Attributes:
        src: the input file; out: the trace file written.
        lines: non-blank lines read; written: traces written.
        formats: traces written per input shape (``{"gsm8k": 7473}``).
        closed: traces whose thinking or solution ended by itself; with_gold: traces with a gold answer.
        bad: the lines skipped (not JSON, unknown shape, missing fields), each with its line number.
    """

    src: str
    out: str
    lines: int = 0
    written: int = 0
    formats: dict = field(default_factory=dict)
    closed: int = 0
    with_gold: int = 0
    bad: list[BadLine] = field(default_factory=list)


def detect_format(obj: dict) -> str | None:
    """The input shape of one record by its keys (see the module docstring), or None if none fits."""
    if "conversations" in obj:
        return "sharegpt"
    if "messages" in obj:
        return "messages"
    if "question" in obj and ({"think", "final", "raw_completion"} & obj.keys()):
        return "think-final"
    if "question" in obj and "answer" in obj:
        return "gsm8k"
    if "problem" in obj and "solution" in obj:
        return "math"
    return None


def _text(obj: dict, name: str, *, required: bool = True) -> str | None:
    value = obj.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ValueError(f'"{name}" must be a string' + ("" if name in obj else " (missing)"))
    return value


def _gold(obj: dict, *names: str) -> str | None:
    for name in names:
        value = obj.get(name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            return str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _flag(value: object, name: str) -> bool | None:
    """A JSON boolean, or the strings "true"/"false" (any case) some exporters write; None when absent."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f'"{name}" must be true or false, got {value!r}')


def _gsm8k(obj: dict, calculator_notes: bool = False) -> dict:
    question, solution = _text(obj, "question"), _text(obj, "answer")
    m = _GSM8K_FINAL.search(solution)
    if m is None or not m.group(1).strip():
        raise ValueError('"answer" does not end in a "#### N" line (the GSM8K final answer)')
    gold = m.group(1).strip()
    steps = solution[: m.start()] if calculator_notes else _CALCULATOR_NOTE.sub("", solution[: m.start()])
    steps = steps.strip()
    answer = f"{steps}\n\\boxed{{{gold}}}" if steps else f"\\boxed{{{gold}}}"
    return {"question": question, "thinking": "", "answer": answer, "gold": gold, "closed": True,
            "teacher": {"name": "gsm8k-reference", "kind": "import"}}


def _math(obj: dict) -> dict:
    from ..grading import extract_answer

    question, solution = _text(obj, "problem"), _text(obj, "solution")
    gold = _gold(obj, "answer") or extract_answer(solution)
    if gold is None:
        raise ValueError('no "answer" field and no \\boxed{} answer in "solution"')
    meta = {k: v for k, v in obj.items() if k in ("subject", "level", "type")}
    return {"question": question, "thinking": "", "answer": solution.strip(), "gold": gold, "closed": True,
            "meta": meta, "teacher": {"name": "math-reference", "kind": "import"}}


def _think_final(obj: dict) -> dict:
    question = _text(obj, "question")
    raw = _text(obj, "raw_completion", required=False)
    if "think" in obj or "final" in obj:
        thinking = _text(obj, "think", required=False) or ""
        answer = _text(obj, "final", required=False) or ""
        closed = True if raw is None else (THINK_CLOSE in raw or THINK_OPEN not in raw)
    elif raw is not None:
        thinking, answer, closed = split_thinking(raw)
    else:
        raise ValueError('needs "think"/"final" or "raw_completion"')
    complete = _flag(obj.get("trace_complete"), "trace_complete")
    if complete is None and raw is None:
        complete = bool(answer.strip())  # nothing else says whether it ended: an answer means it did
    closed = closed and complete is not False
    used = {"id", "question", "think", "final", "gold_answer", "trace_complete", "teacher_model"}
    meta = {k: v for k, v in obj.items() if k not in used and k not in _DROPPED_FIELDS}
    return {"question": question, "thinking": thinking.strip(), "answer": answer.strip(),
            "gold": _gold(obj, "gold_answer", "gold"), "closed": closed, "meta": meta,
            "teacher": {"name": str(obj.get("teacher_model") or "unknown"), "kind": "import"}}


def _content(turn: dict, key: str) -> str:
    value = turn.get(key)
    if isinstance(value, list):  # OpenAI content parts: keep the text ones
        value = "".join(p.get("text", "") for p in value if isinstance(p, dict) and p.get("type") == "text")
    if not isinstance(value, str):
        raise ValueError(f'a turn\'s "{key}" must be a string')
    return value


def _chat(obj: dict, fmt: str) -> dict:
    key, role_key, text_key = (("conversations", "from", "value") if fmt == "sharegpt"
                               else ("messages", "role", "content"))
    turns = obj.get(key)
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise ValueError(f'"{key}" must be a list of objects')
    user = assistant = system = None
    for turn in turns:
        role = _ROLES.get(str(turn.get(role_key, "")).lower())
        if role is None:
            raise ValueError(f'unknown {role_key} {turn.get(role_key)!r} (expected one of {", ".join(_ROLES)})')
        if role == "user" and user is None:
            user = _content(turn, text_key)
        elif role == "assistant":
            assistant = turn
        elif role == "system" and system is None:
            system = _content(turn, text_key)
    if user is None:
        raise ValueError("no user turn (the question)")
    if assistant is None:
        raise ValueError("no assistant turn (the response)")
    response = _content(assistant, text_key)
    for open_tag, close_tag in _THOUGHT_TAGS:
        response = response.replace(open_tag, THINK_OPEN).replace(close_tag, THINK_CLOSE)
    for tag in _SOLUTION_TAGS:
        response = response.replace(tag, "")
    thinking, answer, closed = split_thinking(response)
    reasoning = assistant.get("reasoning_content") or assistant.get("reasoning") or assistant.get("thinking")
    if isinstance(reasoning, str) and reasoning.strip() and not thinking:
        thinking = reasoning.strip()
    meta = {"system": system} if system else {}
    name = obj.get("model") or obj.get("teacher_model") or obj.get("teacher") or "unknown"
    return {"question": user, "thinking": thinking, "answer": answer, "closed": closed, "meta": meta,
            "gold": _gold(obj, "gold", "gold_answer", "answer"), "teacher": {"name": str(name), "kind": "import"}}


_CONVERTERS = {"gsm8k": _gsm8k, "math": _math, "think-final": _think_final, "sharegpt": lambda o: _chat(o, "sharegpt"),
               "messages": lambda o: _chat(o, "messages")}


def convert_record(obj: dict, fmt: str, *, default_id: str, sample: int = 0, source: str = "",
                   calculator_notes: bool = False) -> Trace:
    """Convert one input record of shape ``fmt`` into a trace (the rules are in the module docstring).

    Args:
        obj: the JSON object.
        fmt: one of :data:`FORMATS` other than ``auto``.
        default_id: the id used when the record has no ``id`` field.
        sample: the trace's sample index.
        source: where it came from, recorded in ``teacher.params``.
        calculator_notes: keep GSM8K's ``<<EXPR=RESULT>>`` notes (recorded in ``teacher.params`` when set).

    Raises:
        ValueError: a field the shape needs is missing or of the wrong type; the message names it.
    """
    fields = _gsm8k(obj, calculator_notes) if fmt == "gsm8k" else _CONVERTERS[fmt](obj)
    record_id = obj.get("id", obj.get("unique_id"))
    trace_id = str(record_id) if isinstance(record_id, (str, int)) and not isinstance(record_id, bool) else default_id
    fields["teacher"]["params"] = {"source": source, "format": fmt}
    if calculator_notes and fmt == "gsm8k":
        fields["teacher"]["params"]["calculator_notes"] = True
    return Trace(id=trace_id, sample=sample, **fields)


def iter_imported(src: str | Path, fmt: str = "auto", bad: list[BadLine] | None = None, *,
                  calculator_notes: bool = False) -> Iterator[tuple[str, Trace]]:
    """Yield (input shape, trace) for each convertible line of ``src``; other lines go to ``bad`` and are skipped.
    ``calculator_notes``: as in :func:`convert_record`.

    Raises:
        ConfigError: ``fmt`` is not one of :data:`FORMATS`.
        LoaderError: the file cannot be read.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {' | '.join(FORMATS)}, got {fmt!r}")
    src = Path(src)
    bad = [] if bad is None else bad
    samples: Counter = Counter()
    for number, obj in iter_jsonl(src, bad):
        shape = detect_format(obj) if fmt == "auto" else fmt
        if shape is None:
            bad.append(BadLine(str(src), number, "unknown shape: expected the keys of gsm8k (question, answer), "
                                                 "math (problem, solution), think-final (question, think, final), "
                                                 "sharegpt (conversations) or messages (messages); "
                                                 f"got {', '.join(sorted(obj)) or 'none'}"))
            continue
        try:
            trace = convert_record(obj, shape, default_id=f"{src.stem}_{number - 1}", source=src.name,
                                   calculator_notes=calculator_notes)
        except (ValueError, TypeError) as e:
            bad.append(BadLine(str(src), number, f"not a {shape} record: {e}"))
            continue
        sample = samples[trace.id]
        samples[trace.id] += 1
        if sample:
            trace = replace(trace, sample=sample)
        yield shape, trace


def import_traces(src: str | Path, out: str | Path, *, fmt: str = "auto", force: bool = False,
                  calculator_notes: bool = False, progress: ProgressFn | None = None) -> ImportReport:
    """Convert ``src`` into a dca trace file ``out`` (see the module docstring for the shapes and rules).

    ``out`` is written to a temporary file and renamed into place at the end, so it is never half-written.

    Args:
        src: the input JSONL file.
        out: the trace file to write.
        fmt: the input shape, or ``auto`` to detect it line by line (``--format``).
        force: overwrite an existing ``out`` (``--force``).
        calculator_notes: keep GSM8K's calculator notes ``<<48/2=24>>`` in the solutions
            (``--keep-calculator-notes``); other shapes have none.
        progress: called with a :class:`~dca.progress.Progress` (job ``import``, unit ``traces``, ``done`` the
            traces written so far, ``total`` unknown) every 500 traces and at the end.

    Returns:
        The report: counts, the shapes seen, and the skipped lines with their line numbers.

    Raises:
        ConfigError: ``fmt`` is unknown, ``out`` exists and ``force`` is not set, or ``out`` is ``src``.
        LoaderError: ``src`` cannot be read, or none of its lines converts.
    """
    emit = emitter(progress)
    src, out = Path(src), Path(out)
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {' | '.join(FORMATS)}, got {fmt!r}")
    if not src.is_file():
        raise LoaderError(src, "no such file")
    if out.exists() and out.resolve() == src.resolve():
        raise ConfigError(f"-o/--out {out} is the input file; choose another path")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; add --force to overwrite it, or choose another -o/--out")
    report = ImportReport(src=str(src), out=str(out))
    formats: Counter = Counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_trace_writer(out) as writer:
        for shape, trace in iter_imported(src, fmt, report.bad, calculator_notes=calculator_notes):
            writer.write(trace)
            formats[shape] += 1
            report.written += 1
            report.closed += trace.closed
            report.with_gold += trace.gold is not None
            if report.written % 500 == 0:
                emit(Progress("import", done=report.written, unit="traces"))
        if report.written == 0:
            first = f" (line {report.bad[0].line}: {report.bad[0].reason})" if report.bad else " (it is empty)"
            raise LoaderError(src, f"no line converts to a trace{first}; check --format")
    report.lines = report.written + len(report.bad)
    report.formats = dict(formats)
    emit(Progress("import", done=report.written, unit="traces"))
    return report
