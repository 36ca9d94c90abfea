"""``dca distill verifier``: training data for a verifier (reward model) from a student's own samples.

The student answers each training question k times, as it would at test time (its system prompt, the parallel
llama.cpp sampler of ``--samples``, its tools), and each sample is labelled right or wrong by the shared answer
checker (:func:`dca.grading.is_equivalent`) against the gold. As TinyGSM (Liu et al. 2023, arXiv 2312.09241)
and Cobbe et al. 2021, the verifier learns from the generator's own samples, so it judges the mistakes that
generator makes. The examples are chat messages that :func:`dca.assistant.verifier.verifier_messages` writes
(the one prompt training and scoring share), answered ``Yes`` or ``No``: ``dca distill train`` fine-tunes them
into a generative verifier (Zhang et al. 2024, arXiv 2408.15240) that exports to GGUF like any dca model.

With ``process`` each step (a line) of a sample is labelled too, by rollouts continued from it (Math-Shepherd,
Wang et al. 2023, arXiv 2312.08935, "hard estimation"): a step is good when one of ``rollouts`` continuations
from the steps up to it reaches the gold answer. A right sample's steps are all good (the sample itself is such
a continuation); a wrong sample's steps are rolled out in order up to the first bad one, and the steps after it
are bad, as PRM800K labels a solution up to its first error.

The output directory:

``config.json``
    ``{"format": "dca-verifier-data", "version": 1, "settings": {...}}``; a rerun under other settings is
    refused (``--force`` starts over).
``samples.jsonl``
    one line per question, appended and fsynced when its k samples (and rollouts) are done: ``id``,
    ``question``, ``gold``, ``samples`` (``text``, the sample's thinking and answer as the verifier reads them;
    ``answer``, ``correct``, ``tokens``, ``tool_calls``, and with ``process`` ``steps``, one 0/1 label per
    step). A rerun does only the questions not in it (a partial last line left by ``kill -9`` is dropped), so no
    sample is drawn twice.
``orm.jsonl``, ``prm.jsonl``
    the verifier's training examples (messages JSONL with ``id`` and ``label``), rewritten atomically from
    ``samples.jsonl`` at the end: one per distinct sample text of a question (``orm``), one per step prefix
    (``prm``, with ``process``).
``report.json``
    counts, the share of right samples, and pass@k over the questions.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..assistant.config import GSM8K_SYSTEM_PROMPT
from ..assistant.verifier import solution_text, step_prefixes
from ..errors import ConfigError, LoaderError
from ..paths import atomic_write_json, check_output_dir
from ..progress import Progress, ProgressFn, emitter
from .generate import load_questions, sample_seed
from .traces import TraceWriter, atomic_trace_writer, drop_partial_line

log = logging.getLogger(__name__)

__all__ = ["Sampler", "VerifierDataConfig", "VerifierDataReport", "append_rows", "make_verifier_data", "read_rows"]

FORMAT, VERSION = "dca-verifier-data", 1
SAMPLES, ORM, PRM, CONFIG, REPORT = "samples.jsonl", "orm.jsonl", "prm.jsonl", "config.json", "report.json"


@dataclass
class VerifierDataConfig:
    """Settings of :func:`make_verifier_data` (``dca distill verifier``).

    Args:
        questions: JSONL questions with gold answers (the shapes of ``dca distill generate``).
        out_dir: the output directory (``-o``).
        model: the student, a GGUF path or registered name (``-m``; None: the bundled model).
        samples: k, samples per question (``--samples``).
        limit: the first N questions only (``--limit``).
        temperature: the samples' temperature (``--temperature``).
        max_tokens: most tokens per sample (``--max-tokens``).
        repeat_penalty: as the assistant's (``--repeat-penalty``; 1.0 keeps a sample free to repeat the
            question's numbers, measured in benchmarks/README.md).
        system_prompt: the student's system prompt (``--system-prompt``; the GSM8K task's by default).
        tools: tools answered while sampling (``--tools calculator``), as at test time.
        process: label each step by rollouts too (``--process``), for a process verifier.
        rollouts: continuations per step with ``process`` (``--rollouts``).
        seed: the sampling seed; each question's is derived from it and its id.
        max_wrong: at most this many wrong solutions of a question become outcome examples (``--max-wrong``;
            None: all). A student right one time in thirty gives thirty "No" for each "Yes"; capping them keeps
            the training set, and its cost, to the questions' right solutions and a few wrong ones. It only
            shapes ``orm.jsonl``: changing it rewrites the examples without sampling again.
        force: start over, deleting what an earlier run wrote.
    """

    questions: Path
    out_dir: Path
    model: str | None = None
    samples: int = 8
    limit: int | None = None
    temperature: float = 0.7
    max_tokens: int = 400
    repeat_penalty: float = 1.0
    system_prompt: str = GSM8K_SYSTEM_PROMPT
    tools: tuple[str, ...] = ()
    process: bool = False
    rollouts: int = 4
    seed: int = 0
    max_wrong: int | None = None
    force: bool = False

    def __post_init__(self):
        self.questions, self.out_dir = Path(self.questions), Path(self.out_dir)
        if isinstance(self.tools, str):
            self.tools = tuple(t.strip() for t in self.tools.split(",") if t.strip())
        self.tools = tuple(self.tools)
        if not 1 <= self.samples <= 64:
            raise ConfigError(f"--samples must be in 1..64, got {self.samples}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature must be > 0 (k greedy samples would be one), got {self.temperature}")
        if self.max_wrong is not None and self.max_wrong < 0:
            raise ConfigError(f"--max-wrong must be >= 0, got {self.max_wrong}")
        if self.max_tokens < 1 or not 1 <= self.rollouts <= 64:
            raise ConfigError("--max-tokens must be >= 1 and --rollouts in 1..64")

    def settings(self) -> dict:
        out = asdict(self)
        out.pop("force")
        out.pop("max_wrong")  # shapes the examples only, not the samples
        return json.loads(json.dumps(out, default=str))


@dataclass
class VerifierDataReport:
    """What :func:`make_verifier_data` did: questions done (``skipped`` of them by an earlier run), samples and
    right ones, questions with a right sample (pass@k), examples written, rollouts drawn, seconds."""

    out_dir: str
    questions: int = 0
    skipped: int = 0
    samples: int = 0
    correct: int = 0
    solved: int = 0
    orm_examples: int = 0
    prm_examples: int = 0
    rollouts: int = 0
    seconds: float = 0.0
    bad_lines: list = field(default_factory=list)

    @property
    def pass_at_k(self) -> float:
        return self.solved / self.questions if self.questions else 0.0


def _prepare(cfg: VerifierDataConfig) -> None:
    out = cfg.out_dir
    check_output_dir(out, CONFIG, FORMAT, cfg.settings(), force=cfg.force, held="verifier data made",
                     foreign="is not a verifier data directory")
    if cfg.force:
        for name in (SAMPLES, ORM, PRM, CONFIG, REPORT):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CONFIG, {"format": FORMAT, "version": VERSION, "settings": cfg.settings()})


def read_rows(path: Path) -> list[dict]:
    """The complete JSON lines of ``path`` (none when it does not exist), after dropping a partial last line.

    Raises:
        LoaderError: a line is not JSON (named by number).
    """
    drop_partial_line(path)
    rows = []
    if path.exists():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise LoaderError(path, f"line {number} is not JSON ({e}); delete the line or start over "
                                            "with --force") from e
    return rows


def append_rows(path: Path, questions: list, make_row: Callable[[object], dict], *, job: str,
                progress: ProgressFn | None = None, cancel: Callable[[], bool] | None = None,
                before: Callable[[], None] | None = None) -> tuple[list[dict], int]:
    """One row per question, read from ``path`` or made by ``make_row`` and appended (a flushed, fsynced line).

    The resumable core of the sampling jobs: a question whose row is in ``path`` is not asked again, so an
    interrupted job (an exception, a kill) continues where it stopped and draws no sample twice.

    Args:
        path: the JSONL file of rows, each with the question's ``id`` and its ``samples`` (``correct`` each).
        questions: the questions (``id`` attribute), in order.
        make_row: makes the row of a question not in ``path`` yet.
        job: the progress job's name (unit ``questions``; ``metrics["right"]``, the share of right samples).
        cancel: polled before each question; True stops (what is done is kept).
        before: called once before the first question to make (e.g. to load the model).

    Returns:
        (the rows of ``questions`` that are done, in question order; how many were done before this call).

    Raises:
        LoaderError: ``path`` holds a line that is not JSON.
    """
    emit = emitter(progress)
    by_id = {r["id"]: r for r in read_rows(path)}
    skipped = sum(q.id in by_id for q in questions)
    todo = [q for q in questions if q.id not in by_id]
    if todo:
        right = sum(s["correct"] for q in questions if q.id in by_id for s in by_id[q.id]["samples"])
        drawn = sum(len(by_id[q.id]["samples"]) for q in questions if q.id in by_id)
        if before is not None:
            before()
        with TraceWriter(path) as writer:
            for i, q in enumerate(todo):
                if cancel is not None and cancel():
                    break
                row = make_row(q)
                writer.write(row)
                by_id[q.id] = row
                right += sum(s["correct"] for s in row["samples"])
                drawn += len(row["samples"])
                emit(Progress(job, done=skipped + i + 1, total=len(questions), unit="questions",
                              metrics={"right": right / max(1, drawn)}))
    return [by_id[q.id] for q in questions if q.id in by_id], skipped


def make_verifier_data(cfg: VerifierDataConfig, *, llm=None, progress: ProgressFn | None = None,
                       cancel: Callable[[], bool] | None = None) -> VerifierDataReport:
    """Sample, label and write a verifier's training data (the module docstring has the files).

    Args:
        cfg: the settings.
        llm: the student as an :class:`~dca.llm.LLM` that samples (``can_sample``; ``can_use_tools`` with
            tools); None loads ``cfg.model``.
        progress: called with :class:`~dca.progress.Progress` events (job ``verifier``, unit ``questions``).
        cancel: polled between questions; True stops after the current one (what is done is kept).

    Returns:
        the report, also written as ``report.json``.

    Raises:
        ConfigError: settings out of range, or ``out_dir`` holds other data.
        LoaderError: the questions file cannot be read or has no question with a gold answer.
        ModelError: the model cannot be loaded.
    """
    t0 = time.perf_counter()
    questions, bad = load_questions(cfg.questions, None)
    questions = [q for q in questions if q.gold is not None][:cfg.limit]
    if not questions:
        raise LoaderError(cfg.questions, "no question with a gold answer (GSM8K '#### N', MATH \\boxed{}, or gold)")
    _prepare(cfg)
    report = VerifierDataReport(str(cfg.out_dir), bad_lines=[str(b) for b in bad])
    student = Sampler(llm if llm is not None else cfg.model, samples=cfg.samples, temperature=cfg.temperature,
                      max_tokens=cfg.max_tokens, repeat_penalty=cfg.repeat_penalty, system_prompt=cfg.system_prompt,
                      tools=cfg.tools)

    def make_row(q) -> dict:
        row = student.sample(q, cfg.seed)
        for j, s in enumerate(row["samples"]):
            if cfg.process:
                s["steps"], n = _label_steps(student.bot, cfg, q, j, s["text"], s["correct"])
                report.rollouts += n
        return row

    def load() -> None:
        if llm is None:
            emitter(progress)(Progress("verifier", phase="loading the model"))

    rows, report.skipped = append_rows(cfg.out_dir / SAMPLES, questions, make_row, job="verifier", progress=progress,
                                       cancel=cancel, before=load)
    report.questions = len(rows)
    report.samples = sum(len(r["samples"]) for r in rows)
    report.correct = sum(s["correct"] for r in rows for s in r["samples"])
    report.solved = sum(any(s["correct"] for s in r["samples"]) for r in rows)
    report.orm_examples = _write_examples(cfg.out_dir / ORM, _orm_examples(rows, cfg.max_wrong))
    if cfg.process:
        report.prm_examples = _write_examples(cfg.out_dir / PRM, _prm_examples(rows))
    report.seconds = time.perf_counter() - t0
    atomic_write_json(cfg.out_dir / REPORT, {**asdict(report), "pass_at_k": report.pass_at_k})
    return report


class Sampler:
    """A student answering questions k times, as at test time, each sample labelled by the shared checker.

    The student (a GGUF path or name, None for the bundled model, or an :class:`~dca.llm.LLM`) is loaded on
    first use. Its settings are the assistant's: the system prompt, the parallel llama.cpp sampler of
    ``--samples`` (``samples`` solutions at ``temperature``, ``max_tokens`` each), the tools.
    """

    def __init__(self, model, *, samples: int, temperature: float, max_tokens: int, repeat_penalty: float,
                 system_prompt: str, tools: tuple[str, ...] = ()):
        self.model = model
        self.config = dict(samples=samples, sample_temperature=temperature, max_tokens=max_tokens,
                           repeat_penalty=repeat_penalty, system_prompt=system_prompt, think=False, top_k=0,
                           history_turns=0, tools=tuple(tools), strategy="self_consistency")
        self._bot = None

    @property
    def bot(self):
        """The :class:`~dca.assistant.Assistant` that samples (loads the model the first time)."""
        if self._bot is None:
            from ..assistant import Assistant, AssistantConfig

            self._bot = Assistant(model=self.model, config=AssistantConfig(**self.config))
        return self._bot

    def sample(self, q, seed: int, *, prompt: str | None = None, stream: int = 0, n: int | None = None) -> dict:
        """The row of question ``q``: ``{"id", "question", "gold", "samples": [{"text", "answer", "correct",
        "tokens", "tool_calls"}]}``, ``n`` samples (None: k) asked with ``prompt`` (None: the question itself; the
        row keeps the question as it is), seeded by ``sample_seed(seed, q.id, stream)`` so that a rerun draws
        the same."""
        from dataclasses import replace

        from ..grading import is_equivalent

        bot = self.bot
        bot.config = replace(bot.config, seed=sample_seed(seed, q.id, stream),
                             samples=self.config["samples"] if n is None else n)
        bot.reset()
        answer = bot.ask(q.question if prompt is None else prompt)
        samples = [{"text": solution_text(s.thinking, s.text), "answer": s.answer,
                    "correct": bool(s.answer is not None and is_equivalent(s.answer, q.gold)),
                    "tokens": s.tokens, "tool_calls": [c.to_dict() for c in s.tool_calls]} for s in answer.samples]
        return {"id": q.id, "question": q.question, "gold": q.gold, "samples": samples}

    def close(self) -> None:
        """Free the model when this sampler loaded it (an :class:`~dca.llm.LLM` given to it stays open)."""
        if self._bot is not None and not hasattr(self.model, "sample"):
            self._bot.llm.close()
        self._bot = None


def _label_steps(bot, cfg: VerifierDataConfig, q, j: int, text: str, correct: bool) -> tuple[list[int], int]:
    """Math-Shepherd hard labels of sample ``j``'s steps: (one 0/1 per step, rollouts drawn)."""
    from ..grading import extract_answer, is_equivalent
    from ..tools import get_tools

    prefixes = step_prefixes(text)
    if correct:
        return [1] * len(prefixes), 0
    prompt = bot.answer_prompt(q.question)  # the context the sample itself was drawn in
    extra = {"tools": get_tools(cfg.tools)} if cfg.tools else {}
    labels: list[int] = []
    drawn = 0
    for i in range(len(prefixes) - 1):  # the last step holds the wrong final answer: bad without a rollout
        prefix = prefixes[i] + "\n"
        outs = bot.llm.sample(prompt + prefix, n=cfg.rollouts, max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                              repeat_penalty=cfg.repeat_penalty, seed=sample_seed(cfg.seed, q.id, 1 + 64 * j + i),
                              **extra)
        drawn += len(outs)
        if not any(is_equivalent(extract_answer(prefix + o.text), q.gold) for o in outs):
            break
        labels.append(1)
    return labels + [0] * (len(prefixes) - len(labels)), drawn


def _orm_examples(rows: list[dict], max_wrong: int | None = None):
    from ..assistant.verifier import NO, YES, verifier_messages

    for r in rows:
        seen = set()
        wrong = 0
        for s in r["samples"]:
            if not s["text"].strip() or s["text"] in seen:
                continue
            if not s["correct"]:
                if max_wrong is not None and wrong >= max_wrong:
                    continue
                wrong += 1
            seen.add(s["text"])
            yield {"messages": [*verifier_messages(r["question"], s["text"]),
                                {"role": "assistant", "content": YES if s["correct"] else NO}],
                   "id": r["id"], "label": int(s["correct"])}


def _prm_examples(rows: list[dict]):
    from ..assistant.verifier import NO, YES, verifier_messages

    for r in rows:
        labels: dict[str, int] = {}  # a prefix shared by several samples is good when any rollout said so
        for s in r["samples"]:
            for prefix, label in zip(step_prefixes(s["text"]), s.get("steps", [])):
                labels[prefix] = max(label, labels.get(prefix, 0))
        for prefix, label in labels.items():
            yield {"messages": [*verifier_messages(r["question"], prefix, process=True),
                                {"role": "assistant", "content": YES if label else NO}],
                   "id": r["id"], "label": label}


def _write_examples(path: Path, examples) -> int:
    with atomic_trace_writer(path) as writer:
        return writer.write_all(examples)
