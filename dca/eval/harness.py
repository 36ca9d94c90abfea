"""Run an evaluation: one item at a time through the assistant, one flushed line per item, resumable.

The output directory (format version 1) is a contract:

``config.json``
    ``{"format": "dca-eval", "version": 1, "settings": {...}, "dca_version", "created"}``; ``settings`` are
    the task, data file (absolute path and SHA-256), limit, model, store, samples, effort and the resolved
    :class:`~dca.assistant.AssistantConfig`. ``--resume`` refuses to continue under other settings.
``predictions.jsonl``
    one JSON object per finished item, appended and flushed (and fsynced) as one write: ``index``, ``id``,
    ``question``, ``gold``, ``extracted``, ``correct``, ``scores`` (metric -> per-item value), ``output`` and
    ``thinking`` (raw), ``truncated`` (the answer was cut at ``--max-tokens``), ``voted`` and ``samples``
    (k > 1: each candidate's ``answer``, ``correct``, ``text``, ``thinking``, ``tokens``, ``mean_logprob``,
    ``finish`` and with ``--tools`` its ``tool_calls``), ``tool_calls`` (with ``--tools``: each call's ``tool``,
    ``input``, ``output``, ``error``, the chosen sample's with k > 1, and ``sample_tool_calls``, the number of
    calls in each sample), ``chosen``
    (k > 1: the index of the sample answered with) and ``sample_scores`` (the verifier's score of each sample;
    the ``scores`` then also hold ``best_of_n@k`` and ``weighted_vote@k``, whichever strategy answered),
    ``retrieved`` (qa with a store), ``tokens`` (``thinking``, ``answer``, ``generated``), ``tokens_per_s``,
    ``seconds``. A partial last line left by a kill is dropped on resume.
``report.json``, ``report.md``
    :class:`~dca.eval.report.EvalReport`, computed from ``predictions.jsonl`` alone, so a resumed run
    reports what an uninterrupted one does (timing aside).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import ConfigError, LoaderError, ManifestError
from ..paths import atomic_write_json, atomic_write_text, read_manifest, sha256_file
from ..progress import Progress, ProgressFn, emitter
from .report import MISSING, EvalReport, build_report, setting_pairs, to_markdown
from .tasks import get_task

log = logging.getLogger(__name__)

EVAL_FORMAT = "dca-eval"
EVAL_VERSION = 1
CONFIG, PREDICTIONS, REPORT_JSON, REPORT_MD = "config.json", "predictions.jsonl", "report.json", "report.md"
OUTPUT_FILES = (CONFIG, PREDICTIONS, REPORT_JSON, REPORT_MD)


# Flags of the run's own settings (the assistant's come from AssistantConfig), for the message refusing a resume.
_FLAGS = {
    "task": "--task", "data": "--data", "data_sha256": "--data (the file's content changed)", "limit": "--limit",
    "model": "-m/--model", "store": "--store-dir", "samples": "--samples", "effort": "--effort",
}


def flag(name: str) -> str | None:
    """The command-line flag of a run setting or of an :class:`~dca.assistant.AssistantConfig` field; None for
    a setting without one."""
    if name in _FLAGS:
        return _FLAGS[name]
    from ..assistant.config import AssistantConfig

    meta = AssistantConfig.__dataclass_fields__.get(name)
    flags = meta.metadata.get("flags") if meta is not None else None
    return "/".join(f.split("/")[0] for f in flags) if flags else None  # "--quote/--no-quote" -> "--quote"


# Assistant settings that EvalConfig held as fields of its own before they were declared once (see settings()).
_FLAT_SETTINGS = ("think", "thinking_budget", "max_tokens", "temperature", "sample_temperature", "top_k",
                  "repeat_penalty", "context_sentences", "quote")


@dataclass(init=False)
class EvalConfig:
    """Settings of :func:`run_eval`; the flags of ``dca eval`` resolve into this.

    Args:
        task: ``gsm8k``, ``math`` or ``qa`` (``--task``; :data:`dca.eval.tasks.TASKS`).
        data: the JSONL file of items (``--data``); shapes in :mod:`dca.eval.tasks`.
        limit: evaluate the first N valid items; None for all (``--limit``).
        model: model name or GGUF path; None for the bundled model (``-m/--model``).
        chat_template: ``gemma``, ``chatml`` or a Jinja file for a GGUF without a chat template, or to replace it
            (``--chat-template``); None: the GGUF's, or plain completion prompting.
        store_dir: a RAG store to answer from; for qa it also gives retrieval recall@k (``--store-dir``).
            None: no retrieval (closed-book qa).
        out_dir: the run directory (``-o/--out-dir``); None makes ``./eval-TASK-YYYYmmdd-HHMMSS``.
        resume: continue the run in ``out_dir`` (``--resume``).
        force: delete the run files in a non-empty ``out_dir`` and start over (``--force``).
        assistant: :class:`~dca.assistant.AssistantConfig` settings that override the defaults (and the task's
            system prompt), e.g. ``{"samples": 8}``; they may also be given as keyword arguments
            (``EvalConfig(task="gsm8k", data=..., samples=8)``). ``samples`` k > 1 adds maj@k and pass@k; an
            ``effort`` preset sets k itself, so the two are not given together.

    Raises:
        ConfigError: a setting is unknown or out of range; the message names the flag.
    """

    task: str
    data: Path
    limit: int | None = None
    model: str | None = None
    store_dir: Path | None = None
    out_dir: Path | None = None
    resume: bool = False
    force: bool = False
    assistant: dict = field(default_factory=dict)
    chat_template: str | None = None

    def __init__(self, task: str, data: Path, limit: int | None = None, model: str | None = None,
                 store_dir: Path | None = None, out_dir: Path | None = None, resume: bool = False,
                 force: bool = False, assistant: dict | None = None, chat_template: str | None = None, **settings):
        self.task, self.data, self.limit, self.model, self.store_dir = task, data, limit, model, store_dir
        self.chat_template = chat_template
        self.out_dir, self.resume, self.force = out_dir, resume, force
        self.assistant = {**(assistant or {}), **{k: v for k, v in settings.items() if v is not None}}
        self.__post_init__()

    def __post_init__(self):
        from ..assistant.config import AssistantConfig

        get_task(self.task)
        self.data = Path(self.data).expanduser()
        if not self.data.is_file():
            raise ConfigError(f"--data {self.data}: no such file")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        unknown = sorted(set(self.assistant) - set(AssistantConfig.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; the assistant's settings are: "
                              f"{', '.join(AssistantConfig.__dataclass_fields__)}")
        if self.samples < 1:
            raise ConfigError(f"--samples must be >= 1, got {self.samples}")
        if self.effort is not None and self.samples != 1:
            raise ConfigError(f"--effort {self.effort} sets the number of samples itself; "
                              f"drop --samples {self.samples} "
                              "or --effort")
        AssistantConfig(**self.assistant)  # every value in range (the error names the flag)
        if self.store_dir is not None:
            self.store_dir = Path(self.store_dir).expanduser()
        if self.resume and self.force:
            raise ConfigError("--resume continues a run and --force starts it over: give one of them")
        if self.resume and self.out_dir is None:
            raise ConfigError("--resume needs -o/--out-dir, the directory of the run to continue")
        if self.out_dir is None:
            self.out_dir = Path.cwd() / f"eval-{self.task}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.out_dir = Path(self.out_dir).expanduser()

    def settings(self) -> dict:
        """The run's settings as one flat mapping, ``resume`` and ``force`` left out (a ``dca distill run`` stamp
        hashes it): the run's own fields, ``samples`` and ``effort``, the assistant settings that were fields of
        ``EvalConfig`` before the assistant's were declared once (None when not given, so the stamp of an older
        chain still matches), and any other assistant setting given."""
        out = {"task": self.task, "data": self.data, "limit": self.limit, "model": self.model,
               "store_dir": self.store_dir, "effort": self.effort, "samples": self.samples, "out_dir": self.out_dir}
        out.update({name: self.assistant.get(name) for name in _FLAT_SETTINGS})
        out.update({k: v for k, v in self.assistant.items() if k not in out})
        return out

    @property
    def samples(self) -> int:
        """k as given (``--samples``; 1 when not): an effort preset's k is :func:`samples_per_item`'s."""
        return self.assistant.get("samples", 1)

    @property
    def effort(self) -> str | None:
        """The effort preset given (``--effort``), or None."""
        return self.assistant.get("effort")


def assistant_config(cfg: EvalConfig, base=None, *, with_store: bool):
    """The :class:`~dca.assistant.AssistantConfig` of a run: ``base`` (default: the defaults) with the task's
    system prompt, no history, ``samples`` and ``effort`` as given (1 and none by default), and the overrides of
    ``cfg.assistant``.

    Raises:
        ConfigError: a value is out of the assistant's range.
    """
    from ..assistant import AssistantConfig

    changes = {"system_prompt": get_task(cfg.task).system_prompt(with_store), "history_turns": 0,
               "samples": cfg.samples, "effort": cfg.effort, **cfg.assistant}
    return replace(base if base is not None else AssistantConfig(), **changes)


def samples_per_item(acfg) -> int:
    """k, the answers sampled per item under ``acfg``: its ``samples``, or its effort preset's."""
    return acfg.k


def read_run_settings(run: str | Path) -> dict:
    """The settings mapping of the ``dca eval`` run in directory ``run`` (its ``config.json``).

    Raises:
        ManifestError: ``config.json`` is missing, unreadable, of another format, or holds no settings mapping.
    """
    path = Path(run) / CONFIG
    stored = read_manifest(path, EVAL_FORMAT)
    if stored is None:
        raise ManifestError(path, "no such file")
    if not isinstance(stored.get("settings"), dict):
        raise ManifestError(path, "it holds no settings mapping")
    return stored["settings"]


def read_predictions(path: str | Path, *, repair: bool = False) -> list[dict]:
    """The records of a ``predictions.jsonl``, sorted by ``index`` (the first record of an index wins).

    Args:
        path: the file; a missing one has no records.
        repair: truncate a partial last line (left by a kill mid-write) from the file instead of only
            ignoring it.

    Raises:
        LoaderError: a complete line is not a prediction record (the file was edited or corrupted).
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    keep = raw.rfind(b"\n") + 1
    if keep < len(raw):
        log.warning("%s: dropping a partial last line (%d bytes) left by an interrupted run", path, len(raw) - keep)
        if repair:
            with open(path, "r+b") as f:
                f.truncate(keep)
    records: dict[int, dict] = {}
    for number, line in enumerate(raw[:keep].splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if (not isinstance(rec, dict) or not isinstance(rec.get("index"), int)
                    or not isinstance(rec.get("scores"), dict)):
                raise ValueError("not an object with an integer index and scores")
        except ValueError as e:
            raise LoaderError(path, f"line {number} is not a prediction record ({e}); start over with --force") from e
        records.setdefault(rec["index"], rec)
    return [records[i] for i in sorted(records)]


def _settings_diff(old: dict, new: dict) -> list[str]:
    """The flags whose values differ between a run's stored settings and the new ones. An assistant setting
    that a run made by an older dca did not record counts as that setting's default."""
    from dataclasses import fields

    from ..assistant import AssistantConfig

    # in the form config.json holds (a tuple default reads back as a list)
    defaults = {f"assistant.{f.name}": json.loads(json.dumps(f.default)) for f in fields(AssistantConfig)}
    diffs = []
    for key, a, b in setting_pairs(old, new):
        a, b = defaults.get(key) if a is MISSING else a, None if b is MISSING else b
        if a != b:
            diffs.append(f"{flag(key.rsplit('.', 1)[-1]) or f'setting {key}'} was {a!r}, now {b!r}")
    return diffs


def _prepare_out_dir(cfg: EvalConfig, settings: dict) -> list[dict]:
    """Check or create the run directory; return the records of a run being resumed."""
    out = cfg.out_dir
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o/--out-dir {out} is a file; choose a directory")
    if out.exists() and any(out.iterdir()):
        if cfg.force:
            for name in OUTPUT_FILES:
                (out / name).unlink(missing_ok=True)
        elif cfg.resume:
            try:
                saved = read_run_settings(out)
            except ManifestError as e:
                reason = e.reason
                raise ConfigError(f"--resume: {out} is not a dca eval run (no readable {CONFIG}: {reason}); "
                                  "choose the run's -o/--out-dir") from e
            diffs = list(dict.fromkeys(_settings_diff(saved, settings)))  # samples is also an assistant field
            if diffs:
                raise ConfigError(f"--resume: {out} was run with other settings: {'; '.join(diffs)}. Resume with the "
                                  "same flags, or start over with --force, or choose a new -o/--out-dir")
            return read_predictions(out / PREDICTIONS, repair=True)
        else:
            raise ConfigError(f"-o/--out-dir {out} exists and is not empty; continue that run with --resume, start "
                              "over with --force, or choose another -o/--out-dir")
    out.mkdir(parents=True, exist_ok=True)
    from .. import __version__

    atomic_write_json(out / CONFIG, {
        "format": EVAL_FORMAT, "version": EVAL_VERSION, "settings": settings,
        "dca_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return []


def append_record(f, rec: dict) -> None:
    """Append one prediction record to the open ``predictions.jsonl`` as one write, flushed and fsynced: a kill
    leaves at most a partial last line, which :func:`read_predictions` drops."""
    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def verifier_scores(samples, rows: list[dict]) -> dict[str, int]:
    """``{"best_of_n@k": 0|1, "weighted_vote@k": 0|1}``: whether each choice among k verifier-scored samples
    (:data:`~dca.assistant.strategies.verifier_search.VERIFIER_CHOICES`) is right, by the rows' ``correct``."""
    from ..assistant.strategies.verifier_search import VERIFIER_CHOICES

    return {f"{name}@{len(samples)}": int(bool(rows[choose(samples)]["correct"]))
            for name, choose in VERIFIER_CHOICES.items()}


def _record(item, answer, scored: dict, tools: bool = False) -> dict:
    st = answer.stats
    # the test-time compute spent: all samples' tokens, or in quote mode the candidate tokens scored
    generated = st.generated_tokens or (
        sum(s.tokens for s in answer.samples) if answer.samples else st.thinking_tokens + st.answer_tokens)
    rec = {"index": item.index, "id": item.id, "question": item.question,
           "gold": item.gold if isinstance(item.gold, str) else list(item.gold), **scored,
           "output": answer.text, "thinking": answer.thinking, "truncated": answer.truncated,
           "tokens": {"thinking": st.thinking_tokens, "answer": st.answer_tokens, "generated": generated},
           "tokens_per_s": round(st.tokens_per_s, 3)}
    if answer.chosen is not None:
        rec["chosen"] = answer.chosen
    if answer.samples and isinstance(rec.get("samples"), list) and len(rec["samples"]) == len(answer.samples):
        # the candidates themselves, so that a verifier can judge them later without sampling again (dca eval rescore)
        rec["samples"] = [{**row, "text": s.text, "thinking": s.thinking, "tokens": s.tokens,
                           "mean_logprob": round(s.mean_logprob, 6), "finish": s.finish,
                           **({"tool_calls": [c.to_dict() for c in s.tool_calls]} if tools else {})}
                          for row, s in zip(rec["samples"], answer.samples)]
        if all(s.score is not None for s in answer.samples):
            rec["scores"].update(verifier_scores(answer.samples, rec["samples"]))
    if any(s.score is not None for s in answer.samples):
        rec["sample_scores"] = [None if s.score is None else round(s.score, 6) for s in answer.samples]
    if tools:
        rec["tool_calls"] = [c.to_dict() for c in answer.tool_calls]
        if answer.samples:
            rec["sample_tool_calls"] = [len(s.tool_calls) for s in answer.samples]
    return rec


def run_eval(cfg: EvalConfig, assistant=None, progress: ProgressFn | None = None) -> EvalReport:
    """Evaluate the assistant on ``cfg.task`` and write the run directory (see the module docstring).

    Each item is asked with a reset conversation; its record is appended to ``predictions.jsonl`` before the
    next item starts, so an interrupted run (an exception, KeyboardInterrupt, a kill) resumes with
    ``cfg.resume`` without asking finished items again.

    Args:
        cfg: the settings.
        assistant: an :class:`~dca.assistant.Assistant` to evaluate (its config is replaced by
            :func:`assistant_config` of it, and its store gives recall for qa); None builds one from
            ``cfg.model`` and ``cfg.store_dir``.
        progress: called with a :class:`~dca.progress.Progress` (job ``eval``, unit ``items``) once before the
            first item to ask (``done`` counts items finished by an earlier run) and after each item; its
            ``metrics`` hold the task's main metric (``accuracy``, or ``em`` for qa) over the finished items,
            once there are any.

    Returns:
        the report, also written as ``report.json`` and ``report.md``.

    Raises:
        ConfigError: a setting is out of range, the out dir is not empty (without ``resume``/``force``), or
            ``resume`` under other settings.
        LoaderError: the data file has no valid item, or ``predictions.jsonl`` is corrupt.
        ModelError, StoreError: the model or store cannot be opened.
    """
    from ..bundled import BUNDLED_CHAT_MODEL

    task = get_task(cfg.task)
    items, skipped = task.load(cfg.data, cfg.limit)
    store = assistant.store if assistant is not None else cfg.store_dir
    acfg = assistant_config(cfg, assistant.config if assistant is not None else None, with_store=store is not None)
    if assistant is not None:
        model_name = assistant.llm.name
        store_name = str(Path(getattr(store, "path", "")).resolve()) if store is not None else None
    else:
        model_name = cfg.model or BUNDLED_CHAT_MODEL
        if Path(model_name).expanduser().exists():
            model_name = str(Path(model_name).expanduser().resolve())
        store_name = str(cfg.store_dir.resolve()) if cfg.store_dir is not None else None
    settings = {"task": cfg.task, "data": str(cfg.data.resolve()), "data_sha256": sha256_file(cfg.data),
                "limit": cfg.limit, "model": model_name, "store": store_name, "samples": cfg.samples,
                "effort": cfg.effort, "assistant": asdict(acfg)}
    if cfg.chat_template is not None:  # only when given, so runs from before the setting existed still resume
        settings["chat_template"] = str(cfg.chat_template)
    settings = json.loads(json.dumps(settings))  # the form config.json holds, for comparison on resume
    records = _prepare_out_dir(cfg, settings)

    emit = emitter(progress)
    if assistant is None:
        from ..assistant import Assistant

        emit(Progress("eval", phase="loading the model"))
        assistant = Assistant(model=cfg.model, store=cfg.store_dir, config=acfg, chat_template=cfg.chat_template)
        template = getattr(assistant.llm, "template", None)
        if template is not None and template.source == "completion":
            emit(Progress("eval", phase="the GGUF has no chat template: plain completion prompting "
                                        "(--chat-template names one)"))
    else:
        assistant.config = acfg
    k = samples_per_item(acfg)
    recall_k = acfg.top_k if task.recall and assistant.store is not None and acfg.top_k > 0 else 0
    main = task.main_metric
    done = {r["index"] for r in records}
    correct = sum(r["scores"][main] for r in records)

    def report_progress():
        emit(Progress("eval", done=len(done), total=len(items), unit="items",
                      metrics={main: correct / len(done)} if done else {}))

    report_progress()
    with open(cfg.out_dir / PREDICTIONS, "a", encoding="utf-8") as f:
        for item in items:
            if item.index in done:
                continue
            t0 = time.perf_counter()
            assistant.reset()
            assistant.llm.reset()  # each item from a clean context: outputs independent of item order (resume)
            answer = assistant.ask(item.question)
            rec = _record(item, answer, task.score(item, answer, k), tools=bool(acfg.tools))
            if recall_k:
                hits = assistant.store.search(item.question, k=recall_k, mode=acfg.search_mode, rerank=acfg.rerank)
                rec["retrieved"] = list(dict.fromkeys(h.doc_id for h in hits))
                if item.gold_paragraph_id is not None:
                    rec["scores"][f"recall@{recall_k}"] = int(item.gold_paragraph_id in rec["retrieved"])
            rec["seconds"] = round(time.perf_counter() - t0, 3)
            append_record(f, rec)
            done.add(item.index)
            correct += rec["scores"][main]
            report_progress()

    records = read_predictions(cfg.out_dir / PREDICTIONS)
    report = build_report(cfg.task, k, records, settings=settings, skipped=tuple(skipped), out_dir=cfg.out_dir)
    atomic_write_json(cfg.out_dir / REPORT_JSON, report.to_dict())
    atomic_write_text(cfg.out_dir / REPORT_MD, to_markdown(report))
    return report
