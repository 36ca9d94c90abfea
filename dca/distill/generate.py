"""Generate reasoning traces from a teacher: N samples per question, appended to a resumable JSONL file.

Each (question id, sample index) is written once, as one whole fsynced line (:class:`TraceWriter`), by the
calling thread while worker threads query the teacher; a re-run reads the output first and does only the
missing pairs, so an interrupted run (Ctrl-C, ``kill -9``, a crash) resumes where it stopped. Each sample's
seed is a hash of (seed, id, sample), so a resumed run asks for the same samples as an uninterrupted one
when the teacher honours seeds. Rejection sampling against the gold answer (keeping only the traces whose
final answer is right) follows STaR (Zelikman et al. 2022) and DeepSeek-R1's distillation data
(DeepSeek-AI 2025); here it is only recorded (``meta.correct``), filtering is ``dca distill filter``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, TeacherError
from ..grading import extract_answer, is_equivalent
from ..progress import Progress, ProgressFn, emitter
from .teachers import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    TEACHER_KINDS,
    Teacher,
    make_teacher,
)
from .traces import BadLine, Trace, TraceWriter, iter_jsonl, read_traces

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = ("Solve the problem. Reason step by step, then give the final answer on the last line "
                         "as \\boxed{ANSWER}.")
MAX_CONSECUTIVE_FAILURES = 10  # the teacher is down or misconfigured: stop instead of failing every sample
QUESTION_KEYS = ("question", "problem", "prompt")


@dataclass
class GenerateConfig:
    """Settings of ``dca distill generate``; every field is the flag of the same name.

    Attributes:
        questions: input JSONL (see :func:`load_questions`).
        out: the trace JSONL appended to (``-o/--out``); existing (id, sample) pairs are skipped.
        teacher: ``openai`` | ``gguf`` | ``hf`` (see :func:`dca.distill.teachers.make_teacher`).
        teacher_model: the model name (openai), GGUF name or path (gguf; None: bundled) or directory (hf).
        base_url: the OpenAI-compatible API root, e.g. ``http://127.0.0.1:8080/v1`` (openai only).
        api_key_env: the environment variable holding the API key (openai only; may be unset).
        samples: samples per question (>= 1).
        temperature: sampling temperature (>= 0; 0 is greedy, so samples repeat).
        max_tokens: most generated tokens per sample, thinking included.
        system_prompt: the system turn of every request; "" sends none.
        concurrency: requests in flight at once for HTTP teachers; local teachers run one at a time.
        timeout_s: seconds allowed for one HTTP request.
        max_retries: retries of a failed HTTP request (429, 5xx, connection errors).
        limit: use only the first N valid questions; None uses all.
        seed: base seed; sample k of question q gets :func:`sample_seed` (seed, q, k).
    """

    questions: Path
    out: Path
    teacher: str = "openai"
    teacher_model: str | None = None
    base_url: str | None = None
    api_key_env: str = DEFAULT_API_KEY_ENV
    samples: int = 1
    temperature: float = 0.7
    max_tokens: int = 2048
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    concurrency: int = 8
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    limit: int | None = None
    seed: int = 0

    def __post_init__(self):
        self.questions, self.out = Path(self.questions), Path(self.out)
        checks = [
            (self.teacher in TEACHER_KINDS, "--teacher", f"one of {', '.join(TEACHER_KINDS)}", self.teacher),
            (self.teacher != "openai" or bool(self.base_url), "--base-url",
             "an API root such as http://127.0.0.1:8080/v1 for --teacher openai", self.base_url),
            (self.teacher not in ("openai", "hf") or bool(self.teacher_model), "--teacher-model",
             f"a model name or directory for --teacher {self.teacher}", self.teacher_model),
            (self.samples >= 1, "--samples", "an integer >= 1", self.samples),
            (self.temperature >= 0, "--temperature", "a number >= 0", self.temperature),
            (self.max_tokens >= 1, "--max-tokens", "an integer >= 1", self.max_tokens),
            (self.concurrency >= 1, "--concurrency", "an integer >= 1", self.concurrency),
            (self.timeout_s > 0, "--timeout", "a number of seconds > 0", self.timeout_s),
            (self.max_retries >= 0, "--max-retries", "an integer >= 0", self.max_retries),
            (self.limit is None or self.limit >= 1, "--limit", "an integer >= 1", self.limit),
            (self.seed >= 0, "--seed", "an integer >= 0", self.seed),
            (self.out.resolve() != self.questions.resolve(), "-o/--out", "a file other than the questions", self.out),
        ]
        for ok, flag, expected, got in checks:
            if not ok:
                raise ConfigError(f"{flag}: expected {expected}, got {got!r}")


@dataclass(frozen=True)
class Question:
    """One input question: a stable ``id``, the prompt text, the gold answer (None if the source has none),
    and ``source`` (``file:line``)."""

    id: str
    question: str
    gold: str | None
    source: str


def _gold(value: object) -> str | None:
    """The final answer inside a gold field: after ``####`` (GSM8K), the last ``\\boxed{}`` (MATH), or the text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        return None
    if "####" in value:
        return value.rsplit("####", 1)[1].strip().replace(",", "") or None
    if "\\boxed" in value or "\\fbox" in value:
        return extract_answer(value)
    return value.strip()


def _parse_question(rec: dict) -> tuple[str, str | None]:
    """(question text, gold) of a record; raises ValueError saying what is missing."""
    text = next((rec[k] for k in QUESTION_KEYS if isinstance(rec.get(k), str) and rec[k].strip()), None)
    if text is None and isinstance(rec.get("messages"), list):
        text = next((m.get("content") for m in rec["messages"] if isinstance(m, dict) and m.get("role") == "user"
                     and isinstance(m.get("content"), str) and m["content"].strip()), None)
    if text is None:
        raise ValueError('no question: expected a "question", "problem" or "prompt" string, '
                         'or "messages" with a user turn')
    gold = next((g for g in (_gold(rec.get(k)) for k in ("gold", "answer")) if g is not None), None)
    if gold is None and isinstance(rec.get("solution"), str) and "boxed" in rec["solution"]:
        gold = extract_answer(rec["solution"])
    return text.strip(), gold


def load_questions(path: str | Path, limit: int | None = None) -> tuple[list[Question], list[BadLine]]:
    """Read questions from JSONL: GSM8K (``question``, ``answer`` ending in ``#### N``), MATH (``problem``,
    ``answer`` or a ``solution`` with ``\\boxed{}``), ``messages`` (the first user turn; gold from ``gold`` or
    ``answer``), or ``question``/``prompt`` with an optional ``gold``.

    The id is the record's ``id`` (string or integer), else ``{file stem}-{line number}``, so it stays the
    same across runs as long as the file is not edited.

    Returns:
        (questions in file order, at most ``limit`` of them; skipped lines with their numbers and reasons:
        not JSON, no question, or a duplicate id).

    Raises:
        LoaderError: the file cannot be read.
    """
    path = Path(path)
    bad: list[BadLine] = []
    out: list[Question] = []
    seen: dict[str, int] = {}
    for number, rec in iter_jsonl(path, bad):
        try:
            text, gold = _parse_question(rec)
        except ValueError as e:
            bad.append(BadLine(str(path), number, str(e)))
            continue
        rid = rec.get("id")
        qid = (str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid).strip()
               else f"{path.stem}-{number}")
        if qid in seen:
            bad.append(BadLine(str(path), number, f"duplicate id {qid!r} (first on line {seen[qid]})"))
            continue
        seen[qid] = number
        out.append(Question(qid, text, gold, f"{path.name}:{number}"))
        if limit is not None and len(out) >= limit:
            break
    return out, bad


def sample_seed(seed: int, qid: str, sample: int) -> int:
    """The seed of one sample: 31 bits of BLAKE2b over (seed, id, sample); independent of run order."""
    digest = hashlib.blake2b(f"{seed}\x00{qid}\x00{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


@dataclass
class GenerateReport:
    """What a run did. ``skipped``: planned samples already in the output; ``bad_lines``: question lines
    not read; ``errors``: the first failure messages (failed samples are retried by the next run)."""

    out: Path
    questions: int
    planned: int
    written: int = 0
    skipped: int = 0
    failed: int = 0
    judged: int = 0
    accepted: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    bad_lines: list[BadLine] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.judged if self.judged else None


def load_teacher(config: GenerateConfig) -> Teacher:
    """The teacher that ``config`` names (see :func:`dca.distill.teachers.make_teacher`)."""
    return make_teacher(config.teacher, config.teacher_model, base_url=config.base_url, api_key_env=config.api_key_env,
                        timeout_s=config.timeout_s, max_retries=config.max_retries)


def _teacher_record(config: GenerateConfig, teacher: Teacher) -> dict:
    params = {**teacher.params, "temperature": config.temperature, "max_tokens": config.max_tokens,
              "seed": config.seed, "system_prompt": config.system_prompt}
    return {"name": teacher.name, "kind": teacher.kind, "params": params}


def _one(config: GenerateConfig, teacher: Teacher, record: dict, q: Question, sample: int) -> Trace:
    messages = ([{"role": "system", "content": config.system_prompt}] if config.system_prompt else [])
    messages.append({"role": "user", "content": q.question})
    seed = sample_seed(config.seed, q.id, sample)
    start = time.perf_counter()
    r = teacher.complete(messages, temperature=config.temperature, max_tokens=config.max_tokens, seed=seed)
    meta = {"seed": seed, "source": q.source, "latency_s": round(time.perf_counter() - start, 3)}
    if q.gold is not None:
        # a reply cut off by max_tokens has no final answer unless it already boxed one (its last number is noise)
        truncated = r.finish == "length" and "\\boxed" not in r.content
        predicted = extract_answer(r.content) if r.content and not truncated else None
        meta.update(predicted=predicted, correct=predicted is not None and is_equivalent(predicted, q.gold))
    return Trace(id=q.id, sample=sample, question=q.question, answer=r.content, thinking=r.thinking, gold=q.gold,
                 closed=r.closed, finish=r.finish, teacher=record,
                 tokens={"prompt": r.prompt_tokens, "completion": r.completion_tokens}, meta=meta)


def generate(config: GenerateConfig, teacher: Teacher, *,
             progress: ProgressFn | None = None) -> GenerateReport:
    """Sample ``config.samples`` traces per question from ``teacher`` and append them to ``config.out``.

    Pairs (id, sample) already in the output are skipped, so re-running the same command resumes an
    interrupted run without duplicates. Samples run ``config.concurrency`` at a time when
    ``teacher.concurrent`` (else one at a time) and are written in the order they finish.

    Args:
        config: the settings.
        teacher: the model that writes the traces.
        progress: called with a :class:`~dca.progress.Progress` (job ``generate``, unit ``samples``: the planned
            samples in the output, earlier runs included) after the start and after each sample; metrics
            ``written``, ``failed`` (this run), ``judged``, ``accepted``, ``acceptance`` (samples with a gold
            answer, those that matched it, and their ratio once there is one), ``completion_tokens`` (this run),
            ``tokens_per_s`` (when the teacher reports token counts) or ``samples_per_s``, ``elapsed_s``.

    Returns:
        counts of the run; failed samples (a :class:`TeacherError` that is not fatal) are not written, so
        the next run retries them.

    Raises:
        LoaderError: the questions or the output cannot be read.
        ConfigError: the output holds traces of another teacher or other sampling settings.
        TeacherError: a fatal teacher error (credentials, URL, model), or
            ``MAX_CONSECUTIVE_FAILURES`` failures in a row; what finished before is kept.
    """
    start = time.perf_counter()
    questions, bad = load_questions(config.questions, config.limit)
    record = _teacher_record(config, teacher)
    writer = TraceWriter(config.out)  # first: it drops a partial last line left by a kill
    try:
        report, todo = _plan(config, questions, record)
        report.bad_lines = bad
        _run(config, teacher, record, todo, writer, report, start, progress)
    finally:
        writer.close()
    report.wall_s = time.perf_counter() - start
    return report


SAMPLING_PARAMS = ("temperature", "max_tokens", "seed", "system_prompt")


def _plan(config: GenerateConfig, questions: list[Question], record: dict) -> tuple[GenerateReport, list]:
    """The report's starting counts and the (question, sample) pairs not yet in the output."""
    out_bad: list[BadLine] = []
    existing = read_traces(config.out, out_bad)
    for b in out_bad:
        log.warning("malformed trace line left as it is: %s", b)
    mine = {k: record["params"][k] for k in SAMPLING_PARAMS}
    for t in existing:  # the base URL or model path may change between runs; the model and sampling may not
        theirs = {k: (t.teacher.get("params") or {}).get(k) for k in SAMPLING_PARAMS}
        if (t.teacher.get("name"), t.teacher.get("kind"), theirs) != (record["name"], record["kind"], mine):
            raise ConfigError(
                f"{config.out} holds traces of another teacher or other sampling settings (line for id {t.id!r}: "
                f"{t.teacher.get('name')} {t.teacher.get('kind')} {theirs}); "
                f"this run: {record['name']} {record['kind']} "
                f"{mine}. Resume with the same settings, or write to another -o/--out file")
    planned = {(q.id, s) for q in questions for s in range(config.samples)}
    have = {t.key: t for t in existing if t.key in planned}
    todo = [(q, s) for q in questions for s in range(config.samples) if (q.id, s) not in have]
    report = GenerateReport(config.out, len(questions), len(planned), skipped=len(have))
    for t in have.values():
        if "correct" in t.meta:
            report.judged += 1
            report.accepted += bool(t.meta["correct"])
    return report, todo


def _run(config, teacher, record, todo, writer, report, start, progress) -> None:
    emit = emitter(progress)

    def tick() -> None:
        elapsed = time.perf_counter() - start
        metrics = {"written": report.written, "failed": report.failed, "judged": report.judged,
                   "accepted": report.accepted, "completion_tokens": report.completion_tokens, "elapsed_s": elapsed}
        if report.judged:
            metrics["acceptance"] = report.accepted / report.judged
        if elapsed:
            if report.completion_tokens:
                metrics["tokens_per_s"] = report.completion_tokens / elapsed
            else:
                metrics["samples_per_s"] = report.written / elapsed
        emit(Progress("generate", done=report.skipped + report.written, total=report.planned, unit="samples",
                      metrics=metrics))

    workers = config.concurrency if teacher.concurrent else 1
    pool = ThreadPoolExecutor(workers, thread_name_prefix="dca-teacher")
    pending: set = set()
    queue = iter(todo)
    streak = 0
    tick()
    try:
        while True:
            while len(pending) < workers and (item := next(queue, None)) is not None:
                pending.add(pool.submit(_one, config, teacher, record, *item))
            if not pending:
                break
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                try:
                    trace = fut.result()
                except TeacherError as e:
                    if e.fatal:
                        raise
                    report.failed += 1
                    streak += 1
                    if len(report.errors) < 10:
                        report.errors.append(str(e))
                    log.warning("sample failed: %s", e)
                    if streak >= MAX_CONSECUTIVE_FAILURES:
                        raise TeacherError(f"{streak} samples failed in a row, stopping; last error: {e}. Finished "
                                           "samples are kept: fix the teacher and rerun the same command") from e
                else:
                    streak = 0
                    writer.write(trace)  # this thread is the only writer: whole lines, fsynced
                    report.written += 1
                    report.completion_tokens += (trace.tokens or {}).get("completion") or 0
                    if "correct" in trace.meta:
                        report.judged += 1
                        report.accepted += bool(trace.meta["correct"])
                tick()
    except BaseException:
        # samples in flight are dropped, not awaited (Ctrl-C must not wait for long generations); rerun redoes them
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
