"""``dca distill star``: the STaR loop, a model's own verified rationales as its next training data.

STaR (Self-Taught Reasoner; Zelikman et al. 2022, arXiv 2203.14465): sample rationales from the current model,
keep those that reach the gold answer, ask again with the answer given as a hint where none did
("rationalization"), fine-tune on what was kept, and repeat with the fine-tuned model. Every piece is dca's own
pipeline: the parallel llama.cpp sampler of ``--samples`` (:class:`~dca.distill.verifier.Sampler`), the shared
answer checker (:func:`dca.grading.is_equivalent`), ``dca distill train``, the GGUF export, ``dca eval`` and the
paired bootstrap of ``dca eval compare``.

The output directory:

``star.config.json``
    ``{"format": "dca-star", "version": 1, "settings": {...}}``; a rerun under other settings (but a larger
    ``iterations``) is refused, ``--force`` starts over.
``iter-0/eval/``
    the starting model evaluated on the held-out questions (with ``eval_data``).
``iter-N/`` (N = 1, 2, ...), each stage kill-safe, so that the same command continues where it stopped:

    ``samples.jsonl``
        k samples per training question from the model of iteration N-1, each labelled right or wrong by the
        checker; one fsynced line per question, resumed (:func:`~dca.distill.verifier.append_rows`).
    ``rationales.jsonl``
        (``rationalize``) each question without a right sample asked again with ``(Hint: the answer is G.)``
        after it; a rationale counts when the checker verifies it and it does not mention the hint. One line per
        such question, resumed the same way.
    ``sft.jsonl``
        the traces trained on (:class:`~dca.distill.traces.Trace`): at most ``keep`` distinct right samples per
        question (whitespace-normalized text), else its first counted rationale; the question as the model
        will be asked it, never with the hint. Written atomically from the two files above.
    ``train/``, ``model.F16.gguf``, ``model.QTYPE.gguf``, ``eval/``
        the stages of ``dca distill run`` (:mod:`dca.pipeline`, with its ``STAGE.stamp.json``): fine-tuning
        from the original base (STaR's choice, so that errors do not compound) or, with
        ``continue_training``, from the model of iteration N-1; the export; the held-out evaluation.
    ``report.json``
        the iteration's counts (questions, samples, right, pass@k, rationalized, kept), its evaluation, and the
        verdict against the iteration before: the paired-bootstrap interval of the difference and ``better``,
        ``worse`` or ``no measurable difference``.
``star.json``, ``accuracy.png``
    the table of every iteration (pass@k of the samples, traces kept, held-out accuracy and its interval) and
    its plot.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .assistant.config import GSM8K_SYSTEM_PROMPT
from .distill.generate import load_questions
from .distill.traces import Trace, atomic_trace_writer
from .distill.verifier import Sampler, append_rows
from .errors import ConfigError, LoaderError
from .paths import atomic_write_json, check_output_dir
from .progress import Progress, ProgressFn, emitter

log = logging.getLogger(__name__)

__all__ = ["StarConfig", "StarReport", "hint_prompt", "run_star", "select_traces"]

FORMAT, VERSION = "dca-star", 1
CONFIG, TABLE, PLOT = "star.config.json", "star.json", "accuracy.png"
SAMPLES, RATIONALES, SFT, REPORT = "samples.jsonl", "rationales.jsonl", "sft.jsonl", "report.json"
HINT_WORD = re.compile(r"\bhint", re.IGNORECASE)
_OWNED_TRAIN = {"data", "out_dir", "resume", "force", "model"}


def hint_prompt(question: str, gold: str) -> str:
    """The question as rationalization asks it: the gold answer given as a hint (STaR, section 3.2)."""
    return f"{question}\n\n(Hint: the answer is {gold}.)"


@dataclass
class StarConfig:
    """Settings of :func:`run_star` (``dca distill star``).

    Args:
        questions: JSONL training questions with gold answers (the shapes of ``dca distill generate``).
        out_dir: the output directory (``-o``).
        model: the starting model, a GGUF path or registered name (``-m``; None: the bundled model); iteration 1
            samples from it.
        base: the weights each iteration fine-tunes from (``--base``; None: ``model``); give the F16 export of
            a quantized ``model`` so that training starts from full-precision weights.
        iterations: how many iterations (``--iterations``); a finished run continues when raised.
        samples: k, samples per question (``--samples``).
        keep: at most this many distinct right samples of a question are trained on (``--keep``).
        limit: the first N training questions only (``--limit``).
        temperature, max_tokens, repeat_penalty, system_prompt, tools: the samples' settings, as
            ``dca distill verifier``'s; the system prompt is also the one trained with and evaluated under.
        rationalize: ask the questions with no right sample again with the gold answer as a hint
            (``--rationalize/--no-rationalize``).
        hint_samples: samples per rationalization (``--hint-samples``).
        continue_training: fine-tune iteration N from iteration N-1's model instead of from ``base``
            (``--continue-training``).
        train: settings of :class:`~dca.distill.train.TrainConfig` (method, lr, epochs, max_steps, seq_len,
            batch_size, ...) but data, model, out_dir, resume and force, which the loop fills in.
        qtype: the quant type of each iteration's model, sampled and evaluated (``--qtype``; F16 or F32 skip
            quantizing; None: the type of ``model``). It must be ``model``'s type, so that every iteration is
            compared with the starting model at the same quantization.
        eval_data: held-out questions evaluated after each iteration (``--eval-data``; None: no evaluation).
        eval_task: the ``dca eval`` task of ``eval_data`` (``--eval-task``).
        eval_limit: the first N held-out questions (``--eval-limit``).
        eval_samples: samples per held-out question: 1 is greedy, k > 1 reports maj@k (``--eval-samples``).
            The evaluation asks as the samples were drawn: the system prompt, no thinking, ``max_tokens``, the
            repeat penalty.
        seed: the sampling seed; each question's is derived from it and its id.
        force: start over, deleting what an earlier run wrote.
    """

    questions: Path
    out_dir: Path
    model: str | None = None
    base: str | None = None
    iterations: int = 1
    samples: int = 8
    keep: int = 4
    limit: int | None = None
    temperature: float = 0.7
    max_tokens: int = 400
    repeat_penalty: float = 1.0
    system_prompt: str = GSM8K_SYSTEM_PROMPT
    tools: tuple[str, ...] = ()
    rationalize: bool = True
    hint_samples: int = 2
    continue_training: bool = False
    train: dict = field(default_factory=dict)
    qtype: str | None = None
    eval_data: Path | None = None
    eval_task: str = "gsm8k"
    eval_limit: int | None = None
    eval_samples: int = 1
    seed: int = 0
    force: bool = False

    def __post_init__(self):
        self.questions, self.out_dir = Path(self.questions), Path(self.out_dir)
        self.eval_data = Path(self.eval_data) if self.eval_data is not None else None
        if isinstance(self.tools, str):
            self.tools = tuple(t.strip() for t in self.tools.split(",") if t.strip())
        self.tools = tuple(self.tools)
        self.qtype = str(self.qtype).upper() if self.qtype is not None else None
        self.train = dict(self.train or {})
        for name, value, low in (("--iterations", self.iterations, 1), ("--samples", self.samples, 1),
                                 ("--keep", self.keep, 1), ("--hint-samples", self.hint_samples, 1),
                                 ("--max-tokens", self.max_tokens, 1), ("--eval-samples", self.eval_samples, 1)):
            if value < low:
                raise ConfigError(f"{name} must be >= {low}, got {value}")
        if self.samples > 64 or self.hint_samples > 64:
            raise ConfigError("--samples and --hint-samples must be at most 64")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature must be > 0 (k greedy samples would be one), got {self.temperature}")
        for name, value in (("--limit", self.limit), ("--eval-limit", self.eval_limit)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        owned = sorted(set(self.train) & _OWNED_TRAIN)
        if owned:
            raise ConfigError(f"train: {', '.join(owned)} are set by the loop (give the model with -m/--base)")
        if self.eval_data is not None and not self.eval_data.is_file():
            raise ConfigError(f"--eval-data {self.eval_data}: no such file")

    def settings(self) -> dict:
        out = asdict(self)
        for key in ("force", "iterations"):
            out.pop(key)
        return json.loads(json.dumps(out, default=str))


@dataclass
class IterationReport:
    """One iteration: its counts, its held-out evaluation (``accuracy`` with its 95% interval; None without
    ``eval_data``) and the paired difference to the iteration before (``diff``, ``low``, ``high``)."""

    iteration: int
    questions: int = 0
    samples: int = 0
    correct: int = 0
    solved: int = 0
    rationalized: int = 0
    rationales_kept: int = 0
    kept: int = 0
    train: str = ""
    metric: str | None = None
    accuracy: float | None = None
    accuracy_low: float | None = None
    accuracy_high: float | None = None
    diff: float | None = None
    low: float | None = None
    high: float | None = None
    verdict: str | None = None
    seconds: float = 0.0

    @property
    def pass_at_k(self) -> float:
        return self.solved / self.questions if self.questions else 0.0


@dataclass
class StarReport:
    """What :func:`run_star` did: the starting model's evaluation (iteration 0) and each iteration's report."""

    out_dir: Path
    iterations: list[IterationReport] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)


def _prepare(cfg: StarConfig) -> None:
    import shutil

    out = cfg.out_dir
    check_output_dir(out, CONFIG, FORMAT, cfg.settings(), force=cfg.force, held="a STaR run",
                     foreign="holds no STaR run", more=" (--iterations may grow)")
    if cfg.force and out.exists():
        for p in out.iterdir():
            if p.name == CONFIG or p.name in (TABLE, PLOT) or re.fullmatch(r"iter-\d+", p.name):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CONFIG, {"format": FORMAT, "version": VERSION, "settings": cfg.settings()})


def select_traces(samples: list[dict], rationales: list[dict], keep: int, iteration: int) -> list[Trace]:
    """The traces an iteration trains on (module docstring): per question, in question order, at most ``keep``
    distinct right samples, else the first right rationale that does not mention the hint.

    Args:
        samples: rows of ``samples.jsonl``.
        rationales: rows of ``rationales.jsonl`` (questions without a right sample).
        keep: the cap per question.
        iteration: recorded in each trace's ``meta``.

    Returns:
        the traces; ``question`` is always the question without the hint.
    """
    by_id = {r["id"]: r for r in rationales}
    out: list[Trace] = []
    for row in samples:
        seen: set[str] = set()
        picked = []
        for j, s in enumerate(row["samples"]):
            norm = " ".join(s["text"].split())
            if s["correct"] and norm and norm not in seen and len(picked) < keep:
                seen.add(norm)
                picked.append((j, s, "sample"))
        if not picked and row["id"] in by_id:
            for j, s in enumerate(by_id[row["id"]]["samples"]):
                if s["correct"] and not s.get("mentions_hint") and s["text"].strip():
                    picked.append((j, s, "rationalization"))
                    break
        for j, s, source in picked:
            out.append(Trace(id=row["id"], sample=j, question=row["question"], answer=s["text"], gold=row["gold"],
                             meta={"source": source, "iteration": iteration}))
    return out


def _iteration_models(cfg: StarConfig, n: int) -> tuple[str | None, str | None]:
    """(the GGUF iteration ``n`` samples from, the weights it fine-tunes from)."""
    if n == 1:
        return cfg.model, cfg.base or cfg.model
    prev = cfg.out_dir / f"iter-{n - 1}"
    sampled = str(prev / f"model.{cfg.qtype}.gguf")
    full = cfg.qtype if cfg.qtype in ("F16", "F32") else "F16"  # the full-precision export of iteration n-1
    return sampled, str(prev / f"model.{full}.gguf") if cfg.continue_training else cfg.base or cfg.model


def _eval_settings(cfg: StarConfig) -> dict:
    s = {"task": cfg.eval_task, "data": str(cfg.eval_data), "limit": cfg.eval_limit, "samples": cfg.eval_samples,
         "system_prompt": cfg.system_prompt, "think": False, "max_tokens": cfg.max_tokens,
         "repeat_penalty": cfg.repeat_penalty}
    if cfg.tools:
        s["tools"] = list(cfg.tools)
    return {k: v for k, v in s.items() if v is not None}


def _pipeline_config(cfg: StarConfig, n: int, base: str | None):
    from .pipeline import PipelineConfig

    d = cfg.out_dir / f"iter-{n}"
    train = {"system_prompt": cfg.system_prompt, "seed": cfg.seed, **cfg.train, "data": [str(d / SFT)]}
    if base is not None:
        train["model"] = base
    quantize = {"qtype": cfg.qtype} if cfg.qtype not in ("F16", "F32") else None
    return PipelineConfig(out_dir=d, train=train, export={"qtype": "F16" if quantize else cfg.qtype},
                          quantize=quantize, eval=_eval_settings(cfg) if cfg.eval_data is not None else None)


def run_star(cfg: StarConfig, *, sampler_for: Callable[[str | None], object] | None = None,
             progress: ProgressFn | None = None, cancel: Callable[[], bool] | None = None) -> StarReport:
    """Run (or continue) the STaR iterations of ``cfg`` (the module docstring has the files).

    Args:
        cfg: the settings.
        sampler_for: the :class:`~dca.llm.LLM` that samples for a model path (None: the bundled model); None
            loads the GGUF. Training, export and evaluation always run the real models.
        progress: called with :class:`~dca.progress.Progress` events: job ``star`` with ``phase``
            ``iteration N: STAGE``, and each stage's own events (jobs ``sample``, ``rationalize``, ``train``,
            ``export``, ``quantize``, ``eval``).
        cancel: polled between questions while sampling; True stops there (what is done is kept), and the run
            returns without going on to the next stage.

    Returns:
        the report; iteration 0 is the starting model (its evaluation only).

    Raises:
        ConfigError: settings out of range, or ``out_dir`` holds another run.
        LoaderError: the questions file has no question with a gold answer.
        ModelError, any error of a stage: what is finished is kept, and the same command continues.
    """
    emit = emitter(progress)
    questions, bad = load_questions(cfg.questions, None)
    questions = [q for q in questions if q.gold is not None][:cfg.limit]
    if not questions:
        raise LoaderError(cfg.questions, "no question with a gold answer (GSM8K '#### N', MATH \\boxed{}, or gold)")
    _resolve_qtype(cfg)
    try:  # the train, export and eval settings are checked now, not after hours of sampling
        _pipeline_config(cfg, 1, cfg.base or cfg.model)
    except ConfigError as e:
        raise ConfigError(f"{e} (a setting of the training, export or evaluation of each iteration)") from e
    _prepare(cfg)
    report = StarReport(cfg.out_dir, bad_lines=[str(b) for b in bad])
    previous_eval = None
    if cfg.eval_data is not None:
        emit(Progress("star", phase="iteration 0: eval"))
        previous_eval = _evaluate_start(cfg, progress)
        report.iterations.append(_iteration_zero(previous_eval))
    for n in range(1, cfg.iterations + 1):
        it = _run_iteration(cfg, n, questions, previous_eval, sampler_for, progress, cancel)
        if it is None:
            break
        report.iterations.append(it)
        previous_eval = cfg.out_dir / f"iter-{n}" / "eval" if cfg.eval_data is not None else None
    _write_table(cfg, report)
    return report


def _gguf_type(path: str | None) -> str | None:
    """The quant type of a GGUF (its ``general.file_type`` by llama.cpp's name), None when it cannot be read."""
    from .llm import resolve_model

    try:
        from gguf import GGUFReader

        from .quant.quantize import LLAMA_CPP_TYPES, WRITE_TYPES

        f = GGUFReader(str(resolve_model(path))).fields.get("general.file_type")
        value = int(f.parts[f.data[0]][0]) if f is not None else None
    except Exception:  # no gguf package, not a GGUF, unknown name: the check is skipped
        return None
    return {v: k for k, v in {**WRITE_TYPES, **LLAMA_CPP_TYPES}.items()}.get(value)


def _resolve_qtype(cfg: StarConfig) -> None:
    start = _gguf_type(cfg.model)
    if cfg.qtype is None:
        cfg.qtype = start or "Q4_K_M"
    elif start is not None and start != cfg.qtype:
        raise ConfigError(f"--qtype {cfg.qtype} differs from the type of -m/--model ({start}): each iteration is "
                          f"compared with the starting model, so both must be quantized alike; give --qtype {start} "
                          f"or a -m exported as {cfg.qtype} (dca quant export ... -t {cfg.qtype})")


def _evaluate_start(cfg: StarConfig, progress) -> Path:
    from .eval import EvalConfig, run_eval

    out = cfg.out_dir / "iter-0" / "eval"
    settings = _eval_settings(cfg)
    run_eval(EvalConfig(**{**settings, "data": Path(settings["data"])}, model=cfg.model, out_dir=out,
                        resume=out.is_dir() and any(out.iterdir())), progress=progress)
    return out


def _iteration_zero(eval_dir: Path) -> IterationReport:
    it = IterationReport(0)
    _fill_eval(it, eval_dir)
    return it


def _fill_eval(it: IterationReport, eval_dir: Path) -> None:
    from .eval.report import load_report

    m = load_report(eval_dir).main
    it.metric, it.accuracy, it.accuracy_low, it.accuracy_high = m.name, m.value, m.low, m.high


def _run_iteration(cfg: StarConfig, n: int, questions, previous_eval: Path | None, sampler_for, progress,
                   cancel) -> IterationReport | None:
    from .pipeline import run_pipeline

    emit = emitter(progress)
    t0 = time.perf_counter()
    d = cfg.out_dir / f"iter-{n}"
    d.mkdir(parents=True, exist_ok=True)
    sampled_model, base = _iteration_models(cfg, n)
    student = Sampler(sampled_model, samples=cfg.samples, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                      repeat_penalty=cfg.repeat_penalty, system_prompt=cfg.system_prompt, tools=cfg.tools)
    it = IterationReport(n)

    def loading(job):
        def load() -> None:  # only when a question is left to sample: a finished stage loads no model
            if student._bot is not None:
                return
            if sampler_for is not None:
                student.model = sampler_for(sampled_model)
            else:
                emit(Progress(job, phase="loading the model"))
        return load

    _check_provenance(d, sampled_model)
    emit(Progress("star", phase=f"iteration {n}: sample"))
    seed = cfg.seed + n - 1  # each iteration draws new samples
    rows, _ = append_rows(d / SAMPLES, questions, lambda q: student.sample(q, seed), job="sample",
                          progress=progress, cancel=cancel, before=loading("sample"))
    if len(rows) < len(questions):
        return None  # cancelled
    failed = [q for q, r in zip(questions, rows) if not any(s["correct"] for s in r["samples"])]
    rationales: list[dict] = []
    if cfg.rationalize and failed:
        emit(Progress("star", phase=f"iteration {n}: rationalize"))

        def rationalize(q) -> dict:
            row = student.sample(q, seed, prompt=hint_prompt(q.question, q.gold), stream=1, n=cfg.hint_samples)
            row["hint"] = hint_prompt(q.question, q.gold)[len(q.question):].strip()
            for s in row["samples"]:
                s["mentions_hint"] = bool(HINT_WORD.search(s["text"]))
            return row

        rationales, _ = append_rows(d / RATIONALES, failed, rationalize, job="rationalize", progress=progress,
                                    cancel=cancel, before=loading("rationalize"))
        if len(rationales) < len(failed):
            return None
    student.close()
    traces = select_traces(rows, rationales, cfg.keep, n)
    if not traces:
        raise ConfigError(f"iteration {n}: no sample or rationale was verified right, so there is nothing to train "
                          f"on (see {d / SAMPLES}); raise --samples or --temperature, or start from a stronger "
                          "model")
    _write_if_changed(d / SFT, traces)
    it.questions, it.samples = len(rows), sum(len(r["samples"]) for r in rows)
    it.correct = sum(s["correct"] for r in rows for s in r["samples"])
    it.solved = sum(any(s["correct"] for s in r["samples"]) for r in rows)
    it.rationalized = len(rationales)
    it.rationales_kept = sum(t.meta["source"] == "rationalization" for t in traces)
    it.kept = len(traces)

    emit(Progress("star", phase=f"iteration {n}: train, export, eval"))
    chain = run_pipeline(_pipeline_config(cfg, n, base), progress=progress)
    it.train = next((s.summary for s in chain.stages if s.stage == "train"), "")
    if cfg.eval_data is not None:
        _fill_eval(it, d / "eval")
        if previous_eval is not None:
            _verdict(it, previous_eval, d / "eval")
    it.seconds = round(time.perf_counter() - t0, 3)
    atomic_write_json(d / REPORT, {**asdict(it), "pass_at_k": it.pass_at_k, "sampled_from": sampled_model,
                                   "trained_from": base})
    return it


def _check_provenance(d: Path, sampled_model: str | None) -> None:
    """Record which model an iteration's samples come from; when that model has changed since (iteration N-1
    trained again), the samples and rationales drawn from the old one are removed so that they are drawn again."""
    from .distill.stamps import fingerprint
    from .llm import resolve_model

    try:
        mark = fingerprint(resolve_model(sampled_model))
    except Exception:  # the model is not there yet or cannot be resolved: sampling will say so
        return
    path = d / "sampled_from.json"
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            old = None
        if old == mark:
            return
        if old is not None:
            log.warning("%s: the model sampled from changed since its samples were drawn; drawing them again", d)
        for name in (SAMPLES, RATIONALES, SFT):
            (d / name).unlink(missing_ok=True)
    atomic_write_json(path, mark)


def _write_if_changed(path: Path, traces: list[Trace]) -> None:
    text = "".join(json.dumps(t.to_dict(), ensure_ascii=False) + "\n" for t in traces)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    with atomic_trace_writer(path) as writer:
        writer.write_all(traces)


def _verdict(it: IterationReport, before: Path, after: Path) -> None:
    from .eval.compare import compare_reports

    cmp = compare_reports(before, after)
    row = next((r for r in cmp.rows if r.name == it.metric), None)
    if row is None or row.diff is None:
        return
    it.diff, it.low, it.high = row.diff, row.low, row.high
    if row.significant:
        it.verdict = "better" if row.diff > 0 else "worse"
    else:
        it.verdict = "no measurable difference"


def _write_table(cfg: StarConfig, report: StarReport) -> None:
    rows = [{**asdict(it), "pass_at_k": it.pass_at_k} for it in report.iterations]
    atomic_write_json(cfg.out_dir / TABLE, {"iterations": rows})
    points = [(it.iteration, it.accuracy, it.accuracy_low, it.accuracy_high) for it in report.iterations
              if it.accuracy is not None]
    if not points:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no %s", PLOT)
        return
    xs = [p[0] for p in points]
    ys = [p[1] * 100 for p in points]
    err = [[(p[1] - (p[2] if p[2] is not None else p[1])) * 100 for p in points],
           [((p[3] if p[3] is not None else p[1]) - p[1]) * 100 for p in points]]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3)
    ax.set_xlabel("STaR iteration (0: the starting model)")
    ax.set_ylabel(f"held-out {points and report.iterations[-1].metric or 'accuracy'} (%)")
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = cfg.out_dir / f".{PLOT}.tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(cfg.out_dir / PLOT)
