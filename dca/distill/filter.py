"""``dca distill filter``: keep the traces worth training on, with one verdict per trace.

Every trace gets exactly one verdict: kept, or dropped for the first failing check, in this order
(:data:`REASONS`):

1. ``contaminated``: its question shares a word 8-gram with a question or problem of a
   ``--decontaminate`` file (lowercased ``\\w+`` words; a question shorter than 8 words must match one
   whole). The s1 decontamination (Muennighoff et al. 2025, "s1: Simple test-time scaling").
2. ``no_gold``: the trace has no gold answer to check it against.
3. ``truncated``: its thinking did not close (``closed`` is False, e.g. cut by a token limit).
4. ``no_answer``: :func:`dca.grading.extract_answer` finds no final answer in ``answer``.
5. ``wrong_answer``: the extracted answer is not :func:`dca.grading.is_equivalent` to the gold.
6. ``too_long``: thinking + answer is over ``max_tokens`` tokens (counting: :func:`token_counter`).
7. ``repetitive``: :func:`repetition` of thinking + answer is over ``max_repetition``.
8. ``duplicate``: the same question and response as a kept trace, after lowercasing and collapsing
   whitespace (a SHA-256 of that text).
9. ``near_duplicate``: Jaccard similarity over word 5-gram shingles of question + response, estimated by
   MinHash (128 permutations) with LSH candidates, at least ``near_dup_threshold`` against a kept trace
   (Broder 1997; the dedup of Lee et al. 2022, "Deduplicating Training Data Makes Language Models Better").
10. ``per_question_cap``: ``max_per_question`` traces of this question id are kept already: STaR's
    rationale selection keeps only verified-correct rationales (Zelikman et al. 2022, "STaR: Bootstrapping
    Reasoning With Reasoning"); the cap bounds how many per question.

Checks 8-10 compare with traces kept earlier, so their order matters: the input order (files in the
order given, lines in file order), or with ``prefer_shorter`` the traces sorted by token count (ties in
input order), so the shortest correct traces of a question are the ones kept.

Outputs (a documented contract; none is overwritten without ``force``):

``OUT``
    ``messages`` JSONL, one object per kept trace: ``{"messages": to_messages(trace), "id", "sample",
    "gold", "teacher"}``; the thinking sits in the assistant turn between ``<think>`` tags. Written last,
    atomically: when it exists the run finished.
``REPORT_DIR`` (default: ``OUT``'s name with ``.report`` for its suffix, beside ``OUT``)
    ``verdicts.jsonl``: one line per input trace, in input order: ``id``, ``sample``, ``kept``, ``reason``
    (``"kept"`` or one of :data:`REASONS`), ``file``, ``line``, ``tokens``, ``extracted`` (the answer
    found, or null), ``repetition``, ``detail`` (what matched, for contamination and duplicates).
    ``report.json``: counts kept and dropped per reason, the bad input lines, token statistics.
    ``lengths.png``: histogram of the token counts of kept and dropped traces.
    ``config.json``: the :class:`FilterConfig` that made them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError, LoaderError, missing
from ..paths import atomic_path, atomic_write_json
from ..progress import Progress, ProgressFn, emitter
from .similarity import NearDuplicateIndex, NgramIndex, approx_tokens, repetition, text_hash
from .traces import BadLine, Trace, atomic_trace_writer, iter_jsonl, iter_traces, to_messages

log = logging.getLogger(__name__)

__all__ = ["REASONS", "REPORT_FILES", "FilterConfig", "FilterReport", "Verdict", "approx_tokens", "filter_traces",
           "repetition"]

REASONS = ("contaminated", "no_gold", "truncated", "no_answer", "wrong_answer", "too_long", "repetitive",
           "duplicate", "near_duplicate", "per_question_cap")
REPORT_FILES = ("verdicts.jsonl", "report.json", "lengths.png", "config.json")
CONTAMINATION_NGRAM = 8  # s1 (Muennighoff et al. 2025)



@dataclass
class FilterConfig:
    """Settings of :func:`filter_traces`; the flags of ``dca distill filter`` resolve into this.

    Args:
        traces: dca trace files (``TRACES...``; from ``dca distill import`` or ``generate``).
        out: the ``messages`` JSONL of kept traces (``-o/--out``).
        decontaminate: JSONL files whose ``question``/``problem`` fields are held out, e.g. GSM8K or MATH-500
            test sets (``--decontaminate``, repeatable).
        max_tokens: most tokens of thinking + answer; None for no limit (``--max-tokens``).
        max_per_question: most traces kept per question id; None for no cap (``--max-per-question``).
        prefer_shorter: take traces shortest first for the duplicate and per-question checks
            (``--prefer-shorter``).
        near_dup_threshold: MinHash Jaccard similarity in (0, 1) at or above which a trace is a near
            duplicate of a kept one (``--near-dup-threshold``).
        max_repetition: highest :func:`repetition` score kept, in (0, 1] (``--max-repetition``). 0.5 keeps every
            closed trace of the Qwen3-30B-A3B sets in ``../shared/data`` (at most 0.40) and drops a paragraph
            looped three or more times (about 0.67 and up).
        report_dir: the report directory (``--report-dir``); None for ``OUT`` with the suffix ``.report``.
        tokenizer: a Hugging Face tokenizer name or directory to count tokens with (``--tokenizer``);
            None counts as :func:`token_counter` says.
        force: overwrite ``out`` and the report files (``--force``).

    Raises:
        ConfigError: a setting is out of range or a file is missing; the message names the flag.
    """

    traces: list[Path]
    out: Path
    decontaminate: list[Path] = field(default_factory=list)
    max_tokens: int | None = None
    max_per_question: int | None = None
    prefer_shorter: bool = False
    near_dup_threshold: float = 0.9
    max_repetition: float = 0.5
    report_dir: Path | None = None
    tokenizer: str | None = None
    force: bool = False

    def __post_init__(self):
        if isinstance(self.traces, (str, Path)):
            self.traces = [self.traces]
        self.traces = [Path(p).expanduser() for p in self.traces]
        if not self.traces:
            raise ConfigError("give at least one trace file (TRACES...)")
        for p in self.traces:
            if not p.is_file():
                raise ConfigError(f"TRACES: {p}: no such file")
        self.out = Path(self.out).expanduser()
        if any(self.out.resolve() == p.resolve() for p in self.traces):
            raise ConfigError(f"-o/--out {self.out} is one of the input trace files; choose another path")
        if isinstance(self.decontaminate, (str, Path)):
            self.decontaminate = [self.decontaminate]
        self.decontaminate = [Path(p).expanduser() for p in self.decontaminate]
        for p in self.decontaminate:
            if not p.is_file():
                raise ConfigError(f"--decontaminate {p}: no such file")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        if self.max_per_question is not None and self.max_per_question < 1:
            raise ConfigError(f"--max-per-question must be >= 1, got {self.max_per_question}")
        if not 0.0 < self.near_dup_threshold < 1.0:
            raise ConfigError(f"--near-dup-threshold must be in (0, 1), got {self.near_dup_threshold}")
        if not 0.0 < self.max_repetition <= 1.0:
            raise ConfigError(f"--max-repetition must be in (0, 1], got {self.max_repetition}")
        self.report_dir = (Path(self.report_dir).expanduser() if self.report_dir is not None
                           else self.out.with_suffix(".report"))
        if self.report_dir.resolve() == self.out.resolve():
            raise ConfigError(f"--report-dir {self.report_dir} is -o/--out; choose another directory")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: ([str(p) for p in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v)
                for k, v in d.items()}


@dataclass(frozen=True)
class Verdict:
    """The verdict on one input trace; the fields are those of ``verdicts.jsonl`` (module docstring)."""

    id: str
    sample: int
    kept: bool
    reason: str
    file: str
    line: int
    tokens: int
    extracted: str | None
    repetition: float
    detail: str | None = None


@dataclass
class FilterReport:
    """What :func:`filter_traces` did; ``report.json`` is :meth:`to_dict`.

    Attributes:
        total: traces read; kept: traces written to ``out``.
        dropped: traces dropped per reason, every reason of :data:`REASONS` present (0 when none).
        bad: input lines that are not traces (and decontamination lines without a question), with line numbers.
        tokens: ``{"kept", "dropped"}`` statistics of token counts: n, mean, median, p90, max.
        token_counter: how tokens were counted: ``tokenizer:NAME``, ``callable``, or ``approx (...)``.
        verdicts: one per input trace, in input order.
        out, report_dir: where the outputs went; wall_s: seconds taken.
    """

    total: int
    kept: int
    dropped: dict
    bad: list[BadLine]
    tokens: dict
    token_counter: str
    verdicts: list[Verdict]
    out: str
    report_dir: str
    wall_s: float

    def to_dict(self) -> dict:
        return {"format": "dca-filter-report", "version": 1, "total": self.total, "kept": self.kept,
                "dropped_total": self.total - self.kept, "dropped": self.dropped,
                "bad_lines": [asdict(b) for b in self.bad], "tokens": self.tokens, "token_counter": self.token_counter,
                "out": self.out, "report_dir": self.report_dir, "wall_s": round(self.wall_s, 3)}


def token_counter(cfg: FilterConfig,
                  count_tokens: Callable[[str], int] | None = None) -> tuple[Callable[[Trace], int], str]:
    """How :func:`filter_traces` counts a trace's tokens (thinking + answer), and its name for the report.

    ``count_tokens`` if given, else the ``cfg.tokenizer`` tokenizer, else the teacher's own
    ``tokens["completion"]`` when the trace carries it, else :func:`approx_tokens`.

    Raises:
        MissingDependencyError: ``cfg.tokenizer`` is set and transformers is not installed.
        ConfigError: the tokenizer cannot be loaded.
    """
    if count_tokens is None and cfg.tokenizer is not None:
        try:
            from transformers import AutoTokenizer
        except ImportError as e:
            raise missing("transformers", "distill") from e
        try:
            tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
        except (OSError, ValueError) as e:
            raise ConfigError(f"--tokenizer {cfg.tokenizer}: cannot load it ({e})") from e

        def count_tokens(text: str) -> int:
            return len(tok(text, add_special_tokens=False)["input_ids"])

        name = f"tokenizer:{cfg.tokenizer}"
    else:
        name = "callable" if count_tokens is not None else "approx (the teacher's count where recorded)"
    if count_tokens is not None:
        return (lambda t: count_tokens(_response(t))), name

    def teacher_or_approx(t: Trace) -> int:
        n = (t.tokens or {}).get("completion")
        return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else approx_tokens(_response(t))

    return teacher_or_approx, name


def _response(t: Trace) -> str:
    return f"{t.thinking}\n{t.answer}" if t.thinking else t.answer


def _load_contamination(paths: list[Path], bad: list[BadLine]) -> NgramIndex:
    index = NgramIndex(CONTAMINATION_NGRAM)
    for path in paths:
        n = 0
        for number, obj in iter_jsonl(path, bad):
            text = obj.get("question", obj.get("problem"))
            if not isinstance(text, str):
                bad.append(BadLine(str(path), number, 'no "question" or "problem" string to decontaminate against'))
                continue
            index.add(text, f"{path.name}:{number}")
            n += 1
        if n == 0:
            raise LoaderError(path, 'no line has a "question" or "problem" field (expected GSM8K, MATH or SQuAD JSONL)')
    return index


def _token_stats(values: list[int]) -> dict:
    if not values:
        return {"n": 0, "mean": None, "median": None, "p90": None, "max": None}
    import numpy as np

    a = np.asarray(values, dtype=float)
    return {"n": len(values), "mean": round(float(a.mean()), 1), "median": float(np.median(a)),
            "p90": round(float(np.percentile(a, 90)), 1), "max": int(a.max())}


def _check_outputs(cfg: FilterConfig) -> None:
    existing = [cfg.report_dir / n for n in REPORT_FILES if (cfg.report_dir / n).exists()]
    if cfg.out.exists():
        existing.insert(0, cfg.out)
    if existing and not cfg.force:
        raise ConfigError(f"{', '.join(map(str, existing))} exist(s); add --force to overwrite, or choose another "
                          "-o/--out (and --report-dir)")
    if cfg.report_dir.exists() and not cfg.report_dir.is_dir():
        raise ConfigError(f"--report-dir {cfg.report_dir} is a file, not a directory")


def _plot_lengths(path: Path, verdicts: list[Verdict], counter: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = [v.tokens for v in verdicts if v.kept]
    dropped = [v.tokens for v in verdicts if not v.kept]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    top = max(kept + dropped, default=1)
    bins = [top * i / 40 for i in range(41)] if top > 0 else 10
    ax.hist([kept, dropped], bins=bins, stacked=True, label=[f"kept ({len(kept)})", f"dropped ({len(dropped)})"],
            color=["#2a9d8f", "#e76f51"])
    ax.set_xlabel(f"tokens of thinking + answer ({counter})")
    ax.set_ylabel("traces")
    ax.set_title("Trace lengths")
    ax.legend()
    fig.tight_layout()

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def filter_traces(cfg: FilterConfig, *, count_tokens: Callable[[str], int] | None = None,
                  progress: ProgressFn | None = None) -> FilterReport:
    """Judge every trace of ``cfg.traces``, write the kept ones as ``messages`` JSONL and the report directory.

    The checks, their order and the output files are in the module docstring.

    Args:
        cfg: the settings.
        count_tokens: counts the tokens of a text; overrides ``cfg.tokenizer`` (see :func:`token_counter`).
        progress: called with a :class:`~dca.progress.Progress` (job ``filter``, unit ``traces``) after each trace,
            in phase ``checking`` (the per-trace checks) then ``selecting`` (duplicates and the per-question cap).

    Returns:
        The report, with every verdict.

    Raises:
        ConfigError: an output exists and ``cfg.force`` is not set, or the tokenizer cannot be loaded.
        LoaderError: an input cannot be read, no trace could be read, or a decontamination file has no questions.
        MissingDependencyError: datasketch or matplotlib is missing (``pip install 'dca[distill]'``).
    """
    emit = emitter(progress)
    from ..grading import extract_answer, is_equivalent

    start = time.perf_counter()
    for module in ("datasketch", "matplotlib"):
        try:
            __import__(module)
        except ImportError as e:
            raise missing(module, "distill") from e
    _check_outputs(cfg)
    count, counter_name = token_counter(cfg, count_tokens)
    bad: list[BadLine] = []
    items = [(path, line, t) for path in cfg.traces for line, t in iter_traces(path, bad)]
    if not items:
        first = f" ({bad[0]})" if bad else ""
        raise LoaderError(cfg.traces[0], f"no dca trace in the input{first}; convert other formats first with: "
                                         "dca distill import SRC -o TRACES.jsonl")
    held_out = _load_contamination(cfg.decontaminate, bad)

    # Stage 1: the checks on each trace alone.
    facts: list[dict] = []
    for i, (_path, _line, t) in enumerate(items):
        tokens, rep = count(t), repetition(_response(t))
        extracted = extract_answer(t.answer) if t.closed else None
        reason, detail = None, None
        if cfg.decontaminate and (where := held_out.find(t.question)) is not None:
            reason, detail = "contaminated", f"shares an 8-gram with {where}"
        elif t.gold is None or not str(t.gold).strip():
            reason = "no_gold"
        elif not t.closed:
            reason = "truncated"
        elif extracted is None:
            reason = "no_answer"
        elif not is_equivalent(extracted, str(t.gold)):
            reason = "wrong_answer"
        elif cfg.max_tokens is not None and tokens > cfg.max_tokens:
            reason = "too_long"
        elif rep > cfg.max_repetition:
            reason = "repetitive"
        facts.append({"tokens": tokens, "repetition": rep, "extracted": extracted, "reason": reason, "detail": detail})
        emit(Progress("filter", phase="checking", done=i + 1, total=len(items), unit="traces"))

    # Stage 2: duplicates and the per-question cap, against the traces kept so far.
    passed = [i for i, f in enumerate(facts) if f["reason"] is None]
    if cfg.prefer_shorter:
        passed.sort(key=lambda i: (facts[i]["tokens"], i))
    near_dups = NearDuplicateIndex(cfg.near_dup_threshold)
    hashes: dict[str, int] = {}
    per_question: Counter = Counter()
    for done, i in enumerate(passed, 1):
        t, f = items[i][2], facts[i]
        key, sig = text_hash(t.question, _response(t)), near_dups.signature(f"{t.question}\n{_response(t)}")
        if key in hashes:
            f["reason"], f["detail"] = "duplicate", f"same text as {_name(items[hashes[key]][2])}"
        elif (near := near_dups.nearest(sig)) is not None:
            f["reason"], f["detail"] = "near_duplicate", f"Jaccard ~{near[1]:.2f} with {_name(items[int(near[0])][2])}"
        elif cfg.max_per_question is not None and per_question[t.id] >= cfg.max_per_question:
            f["reason"] = "per_question_cap"
            f["detail"] = f"{cfg.max_per_question} trace(s) of question {t.id} kept already"
        else:
            f["reason"] = "kept"
            hashes[key] = i
            near_dups.insert(str(i), sig)
            per_question[t.id] += 1
        emit(Progress("filter", phase="selecting", done=done, total=len(passed), unit="traces"))

    verdicts = [Verdict(id=t.id, sample=t.sample, kept=f["reason"] == "kept", reason=f["reason"], file=str(path),
                        line=line, tokens=f["tokens"], extracted=f["extracted"], repetition=round(f["repetition"], 4),
                        detail=f["detail"]) for (path, line, t), f in zip(items, facts)]
    reasons = Counter(v.reason for v in verdicts)
    report = FilterReport(
        total=len(verdicts), kept=reasons["kept"], dropped={r: reasons[r] for r in REASONS}, bad=bad,
        tokens={"kept": _token_stats([v.tokens for v in verdicts if v.kept]),
                "dropped": _token_stats([v.tokens for v in verdicts if not v.kept])},
        token_counter=counter_name, verdicts=verdicts, out=str(cfg.out), report_dir=str(cfg.report_dir), wall_s=0.0)

    cfg.report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg.report_dir / "config.json", cfg.to_dict())
    with atomic_trace_writer(cfg.report_dir / "verdicts.jsonl") as w:
        for v in verdicts:
            w.write(asdict(v))
    _plot_lengths(cfg.report_dir / "lengths.png", verdicts, counter_name)
    report.wall_s = time.perf_counter() - start
    atomic_write_json(cfg.report_dir / "report.json", report.to_dict())
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_trace_writer(cfg.out) as w:
        for (_, _, t), v in zip(items, verdicts):
            if v.kept:
                w.write({"messages": to_messages(t), "id": t.id, "sample": t.sample, "gold": t.gold,
                         "teacher": t.teacher.get("name")})
    log.info("filter: kept %d of %d traces in %.1fs", report.kept, report.total, report.wall_s)
    return report


def _name(t: Trace) -> str:
    return f"{t.id}#{t.sample}"
