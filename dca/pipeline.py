"""``dca distill run``: the whole distillation chain from one YAML file, each stage skipped when up to date.

Stages, in order (a stage left out of the file is not run); each section holds the stage's own settings less
what the chain fills in, and writes under ``out_dir``:

``import_traces``
    ``src``, ``format``, ``calculator_notes`` (:func:`~dca.distill.importers.import_traces`) -> ``traces.jsonl``.
``generate``
    :class:`~dca.distill.generate.GenerateConfig` but ``out`` -> ``traces.jsonl``.
``filter``
    :class:`~dca.distill.filter.FilterConfig` but ``out``, ``report_dir``, ``force`` (``traces`` only when no
    import/generate stage makes them) -> ``sft.jsonl`` and ``sft.report/``.
``train``
    :class:`~dca.distill.train.TrainConfig` but ``out_dir``, ``resume``, ``force`` (``data`` only when no
    earlier stage makes it) -> ``train/``, a run directory (:mod:`dca.distill.rundir`).
``export``
    :class:`~dca.quant.ExportConfig` but ``source``, ``out``, ``force``; ``qtype`` defaults to F16 when a
    quantize stage follows, else to ExportConfig's -> ``model.QTYPE.gguf`` and its manifest.
``quantize``
    ``qtype`` (a llama.cpp type: Q8_0, Q4_K_M...), ``threads``, ``token_embedding_type``,
    ``output_tensor_type`` (as ``dca quant export``'s flags) -> ``model.QTYPE.gguf``.
``eval``
    :class:`~dca.eval.EvalConfig` but ``model`` (the last GGUF), ``out_dir``, ``resume``, ``force`` -> ``eval/``.

Exactly one of ``import_traces`` and ``generate`` may be given. Each stage writes ``STAGE.stamp.json`` beside
its output: ``{"stage", "hash", "status": "running"|"done", "settings", "inputs", "outputs", "started",
"finished", "seconds", "summary"}``; ``hash`` is the SHA-256 of the stage's settings (defaults filled in)
and the fingerprints (:func:`~dca.distill.stamps.fingerprint`) of its input files. A stage is skipped when
its stamp says ``done`` with the current hash and its outputs exist; continued when the stamp says
``running`` with the current hash (generate, train and eval resume their own work); otherwise run afresh,
its old output replaced. A changed stage changes its output, hence the hash of every stage after it.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .distill.stamps import digest, fingerprint
from .errors import ConfigError, ManifestError, TeacherError
from .paths import atomic_write_json, read_manifest
from .progress import Progress, ProgressFn, emitter

log = logging.getLogger(__name__)

__all__ = ["STAGES", "PipelineConfig", "PipelineReport", "StageResult", "run_pipeline"]

STAGES = ("import_traces", "generate", "filter", "train", "export", "quantize", "eval")
# Fields of each stage's config that the chain fills in; a section may not set them.
_OWNED = {"generate": {"out"}, "filter": {"out", "report_dir", "force"}, "train": {"out_dir", "resume", "force"},
          "export": {"source", "out", "force"}, "eval": {"model", "out_dir", "resume", "force"}}
_IMPORT_KEYS = {"src", "format", "calculator_notes"}
_QUANTIZE_KEYS = {"qtype", "threads", "token_embedding_type", "output_tensor_type"}

@dataclass
class PipelineConfig:
    """The chain's settings: ``dca distill run CONFIG`` reads them from the YAML file (sections in the module
    docstring); ``-o/--out-dir`` and ``--force`` override.

    Args:
        out_dir: the directory of every stage's output (``-o/--out-dir``).
        import_traces, generate, filter, train, export, quantize, eval: each stage's settings; None leaves the
            stage out.
        force: run every stage again, whatever the stamps say (``--force``).

    Raises:
        ConfigError: both or neither data source, an unknown setting (named ``section.key``), a setting out
            of range (the stage's own message, prefixed with the section), export without train, or eval
            without export.
    """

    out_dir: Path
    import_traces: dict | None = None
    generate: dict | None = None
    filter: dict | None = None
    train: dict | None = None
    export: dict | None = None
    quantize: dict | None = None
    eval: dict | None = None
    force: bool = False

    def __post_init__(self):
        self.out_dir = Path(self.out_dir).expanduser().resolve()
        for name in STAGES:
            section = getattr(self, name)
            if section is not None and not isinstance(section, dict):
                raise ConfigError(f"{name}: expected a mapping of settings, got {type(section).__name__}")
        if self.import_traces is not None and self.generate is not None:
            raise ConfigError("give one source of traces: import_traces or generate, not both")
        if self.import_traces is not None and "src" not in self.import_traces:
            raise ConfigError("import_traces.src: the JSONL file to import is missing")
        if self.export is not None and self.train is None:
            raise ConfigError("export writes the trained model: add a train section (or run dca quant export alone)")
        if self.eval is not None and self.export is None:
            raise ConfigError("eval runs a GGUF model: add an export section (and optionally quantize)")
        if self.quantize is not None and "qtype" not in self.quantize:
            raise ConfigError("quantize.qtype: the llama.cpp type (Q8_0, Q4_K_M...) is missing")
        if not any(getattr(self, n) is not None for n in STAGES):
            raise ConfigError("the config names no stage; add import_traces or generate, filter, train, export, eval")
        for name in STAGES:
            if getattr(self, name) is not None:
                _validate(self, name)

    def enabled(self) -> list[str]:
        return [n for n in STAGES if getattr(self, n) is not None]


@dataclass
class StageResult:
    """One stage of a run: ``action`` is ``"skipped"`` (up to date), ``"ran"`` or ``"continued"``."""

    stage: str
    action: str
    outputs: list[str]
    seconds: float = 0.0
    summary: str = ""


@dataclass
class PipelineReport:
    """What :func:`run_pipeline` did, stage by stage, in order."""

    out_dir: Path
    stages: list[StageResult] = field(default_factory=list)


def _paths(cfg: PipelineConfig) -> dict[str, Path]:
    d = cfg.out_dir
    export_q = (cfg.export or {}).get("qtype")
    if export_q is None:
        from .quant import ExportConfig

        export_q = "F16" if cfg.quantize is not None else ExportConfig.__dataclass_fields__["qtype"].default
    export_q = str(export_q).upper()
    quant_q = str((cfg.quantize or {}).get("qtype", "")).upper()
    return {"traces": d / "traces.jsonl", "sft": d / "sft.jsonl", "sft_report": d / "sft.report",
            "train": d / "train", "export": d / f"model.{export_q}.gguf", "quantize": d / f"model.{quant_q}.gguf",
            "eval": d / "eval"}


def _stage_config(cfg: PipelineConfig, name: str, placeholder: Path | None = None):
    """The stage's config object (its inputs replaced by ``placeholder`` when checking before the run)."""
    p = _paths(cfg)
    s = dict(getattr(cfg, name))
    if name == "generate":
        from .distill.generate import GenerateConfig

        return GenerateConfig(**s, out=p["traces"])
    if name == "filter":
        from .distill.filter import FilterConfig

        s.setdefault("traces", [placeholder or p["traces"]] if cfg.import_traces or cfg.generate else None)
        if s["traces"] is None:
            raise ConfigError("filter.traces: no import_traces or generate stage makes the traces; name the files")
        if placeholder is not None:
            s["traces"] = [placeholder]
        return FilterConfig(**s, out=p["sft"], report_dir=p["sft_report"], force=True)
    if name == "train":
        from .distill.train import TrainConfig

        made = p["sft"] if cfg.filter is not None else p["traces"] if cfg.import_traces or cfg.generate else None
        if "data" not in s and made is None:
            raise ConfigError("train.data: no earlier stage makes the training data; name the files")
        if "data" not in s or placeholder is not None:
            s["data"] = [placeholder or made]
        return TrainConfig(**s, out_dir=p["train"])
    if name == "export":
        from .quant import ExportConfig

        s.setdefault("qtype", p["export"].name.split(".")[-2])
        return ExportConfig(**s, source=placeholder or _export_source(cfg), out=p["export"], force=True)
    if name == "eval":
        from .eval import EvalConfig

        return EvalConfig(**s, model=str(p["quantize"] if cfg.quantize is not None else p["export"]),
                          out_dir=p["eval"])
    return s


def _validate(cfg: PipelineConfig, name: str) -> None:
    section = getattr(cfg, name)
    if name == "import_traces":
        allowed = _IMPORT_KEYS
    elif name == "quantize":
        allowed = _QUANTIZE_KEYS
    else:
        allowed = {f.name for f in fields(_config_class(name))} - _OWNED[name]
        if name == "eval":  # the assistant's settings, flat beside the run's own
            from .assistant.config import AssistantConfig

            allowed |= set(AssistantConfig.__dataclass_fields__)
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"{name}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    if name in ("import_traces", "quantize"):
        if name == "quantize":
            from .quant.quantize import WRITE_TYPES, normalize_qtype, normalize_tensor_type

            normalize_qtype(section["qtype"], "quantize.qtype")
            for key in ("token_embedding_type", "output_tensor_type"):
                if section.get(key):
                    normalize_tensor_type(section[key], f"quantize.{key}")
            if _paths(cfg)["export"].name.split(".")[-2] not in WRITE_TYPES:
                raise ConfigError(f"quantize needs a full-precision export to start from: set export.qtype to one "
                                  f"of {', '.join(WRITE_TYPES)} (got {cfg.export.get('qtype')})")
        return
    try:
        _stage_config(cfg, name, placeholder=Path(__file__))
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from e
    except TypeError as e:
        raise ConfigError(f"{name}: {e}") from e


def _config_class(name: str) -> type:
    """The config dataclass of a stage."""
    from .distill.filter import FilterConfig
    from .distill.generate import GenerateConfig
    from .distill.train import TrainConfig
    from .eval import EvalConfig
    from .quant import ExportConfig

    return {"generate": GenerateConfig, "filter": FilterConfig, "train": TrainConfig, "export": ExportConfig,
            "eval": EvalConfig}[name]


def _export_source(cfg: PipelineConfig) -> Path:
    train_dir = _paths(cfg)["train"]
    return train_dir / "model" if (cfg.train or {}).get("method") == "full" else train_dir


def _settings(obj) -> dict:
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "settings"):
        return obj.settings()
    return {f.name: getattr(obj, f.name) for f in fields(obj) if f.name not in ("force", "resume")}


def _read_stamp(path: Path) -> dict:
    try:
        return read_manifest(path) or {}
    except ManifestError:
        return {}  # a damaged stamp: the stage runs again


def _remove(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def run_pipeline(cfg: PipelineConfig, *, progress: ProgressFn | None = None) -> PipelineReport:
    """Run the enabled stages of ``cfg`` in order, skipping those whose stamp is current (module docstring).

    Args:
        cfg: the settings.
        progress: called with :class:`~dca.progress.Progress` events: for each stage one with ``event``
            ``"start"`` (or ``"skip"`` when it is up to date), its own progress events (``job`` the stage's
            name, ``phase`` what it does now), and one with ``event`` ``"done"``.

    Returns:
        The report, one :class:`StageResult` per enabled stage.

    Raises:
        Any error of a stage (ConfigError, LoaderError, ModelError, QuantError, TeacherError,
        MissingDependencyError...); the stages before it keep their outputs and stamps, so running again
        resumes at the failed stage.
    """
    emit = emitter(progress)
    paths = _paths(cfg)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    report = PipelineReport(cfg.out_dir)
    for name in cfg.enabled():
        stage_cfg = _stage_config(cfg, name)
        inputs, outputs = _io(cfg, name, stage_cfg, paths)
        h = digest({"stage": name, "settings": _settings(stage_cfg), "inputs": [fingerprint(p) for p in inputs]})
        stamp_path = cfg.out_dir / f"{name}.stamp.json"
        stamp = {} if cfg.force else _read_stamp(stamp_path)
        current = stamp.get("hash") == h
        if current and stamp.get("status") == "done" and all(p.exists() for p in outputs):
            emit(Progress(name, event="skip"))
            report.stages.append(StageResult(name, "skipped", [str(p) for p in outputs], 0.0, stamp.get("summary", "")))
            continue
        resume = current and stamp.get("status") == "running"
        emit(Progress(name, event="start"))
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        record = {"stage": name, "hash": h, "status": "running", "settings": _settings(stage_cfg),
                  "inputs": [str(p) for p in inputs], "outputs": [str(p) for p in outputs], "started": started}
        atomic_write_json(stamp_path, record)
        t0 = time.perf_counter()
        summary = _run_stage(cfg, name, stage_cfg, paths, resume,
                             lambda event, _n=name: emit(replace(event, job=_n)))
        record.update(status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      seconds=round(time.perf_counter() - t0, 3), summary=summary)
        atomic_write_json(stamp_path, record)
        emit(Progress(name, event="done"))
        report.stages.append(StageResult(name, "continued" if resume else "ran", [str(p) for p in outputs],
                                         record["seconds"], summary))
    return report


def _io(cfg: PipelineConfig, name: str, stage_cfg, paths: dict) -> tuple[list[Path], list[Path]]:
    """(input files, output paths) of a stage."""
    if name == "import_traces":
        return [Path(stage_cfg["src"]).expanduser()], [paths["traces"]]
    if name == "generate":
        return [stage_cfg.questions], [paths["traces"]]
    if name == "filter":
        return [*stage_cfg.traces, *stage_cfg.decontaminate], [paths["sft"], paths["sft_report"]]
    if name == "train":
        from .distill.train import resolve_base

        extra = [stage_cfg.chat_template] if isinstance(stage_cfg.chat_template, Path) else []
        return [*stage_cfg.data, *stage_cfg.eval_data, resolve_base(stage_cfg.model)[0], *extra], [paths["train"]]
    if name == "export":
        source = stage_cfg.source
        return [source / "adapter" if (source / "adapter").is_dir() else source], [paths["export"]]
    if name == "quantize":
        return [paths["export"]], [paths["quantize"]]
    return [Path(stage_cfg.model), stage_cfg.data], [paths["eval"]]


def _written(r) -> str:
    """The report line of an export or quantize stage: the file(s) written and what the user should know."""
    line = f"{r.path.name} ({r.size_bytes / 1e6:.1f} MB)"
    if r.lora_path is not None:
        line += f" + LoRA adapter {r.lora_path.name}, applied by llama.cpp at run time"
    return line + "".join(f"; warning: {w}" for w in r.warnings)


def _run_stage(cfg: PipelineConfig, name: str, stage_cfg, paths: dict, resume: bool, emit) -> str:
    """Run one stage; returns a one-line summary for the report."""
    if name == "import_traces":
        from .distill.importers import import_traces

        r = import_traces(stage_cfg["src"], paths["traces"], fmt=stage_cfg.get("format", "auto"), force=True,
                          calculator_notes=bool(stage_cfg.get("calculator_notes", False)),
                          progress=emit)
        return f"{r.written} traces ({len(r.bad)} lines skipped)"
    if name == "generate":
        from .distill.generate import generate, load_teacher

        if not resume:
            _remove(paths["traces"])  # other settings: the earlier samples do not belong to this run
        teacher = load_teacher(stage_cfg)
        try:
            r = generate(stage_cfg, teacher, progress=emit)
        finally:
            teacher.close()
        if r.failed:
            raise TeacherError(f"generate: {r.failed} samples failed ({'; '.join(r.errors[:2])}); run the same "
                               "command again to retry them")
        return f"{r.written} traces written, {r.skipped} already there"
    if name == "filter":
        from .distill.filter import filter_traces

        r = filter_traces(stage_cfg, progress=emit)
        return f"kept {r.kept} of {r.total} traces"
    if name == "train":
        from .distill.train import train

        r = train(replace(stage_cfg, force=not resume, resume=False), progress=emit)
        loss = f", loss {r.first_loss:.4f} -> {r.loss:.4f}" if r.first_loss is not None and r.loss is not None else ""
        ev = f", eval loss {r.eval_loss:.4f}" if r.eval_loss is not None else ""
        return f"{r.steps} steps{loss}{ev}"
    if name == "export":
        from .quant import export

        r = export(stage_cfg, progress=emit)
        return _written(r)
    if name == "quantize":
        from .quant import quantize_export

        r = quantize_export(paths["export"], paths["quantize"], stage_cfg["qtype"], threads=stage_cfg.get("threads"),
                            token_embedding_type=stage_cfg.get("token_embedding_type"),
                            output_tensor_type=stage_cfg.get("output_tensor_type"), progress=emit)
        return _written(r)
    from .eval import run_eval

    r = run_eval(replace(stage_cfg, resume=resume, force=not resume), progress=emit)
    m = r.main
    return f"{m.name} {m.value:.1%} [{m.low:.1%}, {m.high:.1%}] on {m.n} items"
