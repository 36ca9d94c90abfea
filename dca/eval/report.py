"""The report of an evaluation run, computed from its ``predictions.jsonl`` only, and its Markdown form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LoaderError, ManifestError
from .stats import mean_interval, wilson_interval
from .tasks import SkippedLine

REPORT_FORMAT = "dca-eval-report"
REPORT_VERSION = 1
# Fields that depend on the machine and the moment, not on the predictions: excluded when two runs of the
# same settings are compared for equality (an interrupted-and-resumed run against an uninterrupted one).
TIMING_FIELDS = ("tokens_per_s", "wall_s")
# Metrics that average fractional per-item scores: a normal interval instead of Wilson's.
MEAN_METRICS = ("f1", "f1_full", "pass@1")


@dataclass(frozen=True)
class Metric:
    """One metric of a run.

    Attributes:
        name: ``accuracy`` (gsm8k, math), ``em``/``f1``/``f1_full`` (qa), ``maj@k``, ``pass@1``, ``pass@k``,
            ``recall@k``.
        value: the mean of the per-item scores, in [0, 1].
        low, high: its 95% interval: Wilson score (0/1 scores) or normal approximation (``f1``, ``pass@1``).
        n: items scored.
        interval: ``"wilson"`` or ``"normal"``.
    """

    name: str
    value: float
    low: float
    high: float
    n: int
    interval: str


@dataclass(frozen=True)
class EvalReport:
    """The result of :func:`dca.eval.run_eval` (``report.json``).

    Attributes:
        task: ``gsm8k``, ``math`` or ``qa``.
        items: items scored.
        samples: k, answers sampled per item.
        metrics: name -> :class:`Metric`, the task's main metric first.
        mean_thinking_tokens, mean_answer_tokens: per item, from the answer's stats.
        mean_generated_tokens: per item, all samples together (the test-time compute spent).
        tokens_per_s: mean decode rate over items.
        wall_s: seconds spent answering, summed over items (a resumed run adds its parts).
        skipped: data lines not read as items.
        settings: the run's settings (``config.json``).
        out_dir: the directory holding the run's files (not written to ``report.json``).
    """

    task: str
    items: int
    samples: int
    metrics: dict[str, Metric]
    mean_thinking_tokens: float
    mean_answer_tokens: float
    mean_generated_tokens: float
    tokens_per_s: float
    wall_s: float
    skipped: tuple[SkippedLine, ...] = ()
    settings: dict = field(default_factory=dict)
    out_dir: Path | None = None

    @property
    def main(self) -> Metric:
        """The task's main metric: ``accuracy`` or ``em``."""
        return next(iter(self.metrics.values()))

    def to_dict(self) -> dict[str, Any]:
        """The ``report.json`` content (``out_dir`` left out)."""
        d = asdict(self)
        d.pop("out_dir")
        d["skipped"] = [asdict(s) for s in self.skipped]
        return {"format": REPORT_FORMAT, "version": REPORT_VERSION, **d}

    def comparable(self) -> dict[str, Any]:
        """:meth:`to_dict` without :data:`TIMING_FIELDS`: equal for equal predictions."""
        return {k: v for k, v in self.to_dict().items() if k not in TIMING_FIELDS}

    @classmethod
    def from_dict(cls, d: dict, out_dir: Path | None = None) -> EvalReport:
        """Rebuild a report from :meth:`to_dict` output.

        Raises:
            KeyError, TypeError: ``d`` is not a report.
        """
        fields = {k: v for k, v in d.items() if k not in ("format", "version")}
        fields["metrics"] = {name: Metric(**m) for name, m in d["metrics"].items()}
        fields["skipped"] = tuple(SkippedLine(**s) for s in d.get("skipped", ()))
        return cls(**fields, out_dir=out_dir)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def build_report(task: str, samples: int, records: list[dict], *, settings: dict,
                 skipped: tuple[SkippedLine, ...] = (), out_dir: Path | None = None) -> EvalReport:
    """Aggregate prediction records (the lines of ``predictions.jsonl``) into an :class:`EvalReport`.

    Each metric is the mean of the ``scores[name]`` of the records that have it; its interval is Wilson's
    for 0/1 scores and a normal approximation for :data:`MEAN_METRICS`. Values are rounded to 6 digits so a
    report read back from JSON compares equal.
    """
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r["scores"]))
    metrics = {}
    for name in names:
        values = [float(r["scores"][name]) for r in records if name in r["scores"]]
        value = _mean(values)
        if name in MEAN_METRICS:
            low, high, kind = *mean_interval(values), "normal"
        else:
            low, high, kind = *wilson_interval(sum(values), len(values)), "wilson"
        metrics[name] = Metric(name, round(value, 6), round(low, 6), round(high, 6), len(values), kind)
    rates = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")]
    return EvalReport(
        task=task, items=len(records), samples=samples, metrics=metrics,
        mean_thinking_tokens=round(_mean(r["tokens"]["thinking"] for r in records), 3),
        mean_answer_tokens=round(_mean(r["tokens"]["answer"] for r in records), 3),
        mean_generated_tokens=round(_mean(r["tokens"]["generated"] for r in records), 3),
        tokens_per_s=round(_mean(rates), 3),
        wall_s=round(sum(r.get("seconds", 0.0) for r in records), 3),
        skipped=tuple(skipped), settings=settings, out_dir=out_dir,
    )


def to_markdown(report: EvalReport) -> str:
    """``report.md``: a Markdown table of the metrics with their 95% intervals, then compute and settings."""
    s = report.settings
    lines = [
        f"# dca eval: {report.task}",
        "",
        f"{report.items} items from `{s.get('data', '?')}`, model `{s.get('model', '?')}`, "
        f"k = {report.samples} sample(s), effort {s.get('effort') or 'default'}"
        + (f", store `{s['store']}`" if s.get("store") else (", closed-book" if report.task == "qa" else "")) + ".",
        "",
        "| metric | value | 95% interval | n | interval |",
        "|---|---:|---|---:|---|",
    ]
    for m in report.metrics.values():
        lines.append(f"| {m.name} | {m.value:.1%} | [{m.low:.1%}, {m.high:.1%}] | {m.n} | {m.interval} |")
    lines += [
        "",
        "| compute | value |",
        "|---|---:|",
        f"| mean thinking tokens | {report.mean_thinking_tokens:.1f} |",
        f"| mean answer tokens | {report.mean_answer_tokens:.1f} |",
        f"| mean generated tokens (all samples) | {report.mean_generated_tokens:.1f} |",
        f"| tokens/s | {report.tokens_per_s:.1f} |",
        f"| wall time (s) | {report.wall_s:.1f} |",
    ]
    if report.skipped:
        lines += ["", f"{len(report.skipped)} malformed data line(s) skipped:", ""]
        lines += [f"- line {sk.line}: {sk.reason}" for sk in report.skipped]
    return "\n".join(lines) + "\n"


def load_report(path: str | Path) -> EvalReport:
    """Read ``report.json`` (or the run directory holding it).

    Raises:
        LoaderError: the file is missing or not a dca eval report.
    """
    from ..paths import read_manifest

    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        data = read_manifest(path, REPORT_FORMAT)
        if data is None:
            raise ManifestError(path, "no such file")
        return EvalReport.from_dict(data, out_dir=path.parent)
    except (ManifestError, KeyError, TypeError, AttributeError) as e:
        reason = e.reason if isinstance(e, ManifestError) else f"{type(e).__name__}: {e}"
        raise LoaderError(path, f"not a dca eval report ({reason}); "
                                "it is written by: dca eval --task ... --data ...") from e


MISSING = object()  # a setting one of two runs did not record (it was made by an older dca)


def setting_pairs(a: dict, b: dict, prefix: str = ""):
    """Yield ``(dotted key, a's value, b's value)`` for every leaf of two nested settings mappings (a run's
    ``config.json`` settings), keys sorted level by level, :data:`MISSING` where one mapping lacks the key."""
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, MISSING), b.get(key, MISSING)
        if isinstance(va, dict) and isinstance(vb, dict):
            yield from setting_pairs(va, vb, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", va, vb
