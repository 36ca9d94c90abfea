"""Compare two evaluation runs: each metric's difference B - A with a 95% interval and a significance call."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, LoaderError
from .harness import CONFIG, PREDICTIONS, REPORT_JSON, read_predictions, read_run_settings
from .report import MEAN_METRICS, MISSING, EvalReport, build_report, load_report, setting_pairs
from .stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    Z95,
    newcombe_interval,
    paired_bootstrap,
)

# Compute fields compared without an interval (one number per run, no per-item spread kept in the report).
COMPUTE_FIELDS = ("mean_thinking_tokens", "mean_answer_tokens", "mean_generated_tokens", "tokens_per_s", "wall_s")


@dataclass(frozen=True)
class MetricDiff:
    """One row of a :class:`Comparison`.

    Attributes:
        name: the metric (``accuracy``, ``em``, ``maj@k``, ...) or compute field (``mean_answer_tokens``, ...).
        a, b: its value in each run; None when the run does not have it. For a paired metric, its mean over the
            paired items (a run's whole value when the runs scored the same items), so that ``diff`` is ``b - a``
            also when one run is partial.
        diff: b - a (for a paired metric: the mean per-item difference over the paired items).
        low, high: the 95% interval of ``diff``; None for compute fields and one-sided metrics.
        method: ``"paired bootstrap"``, ``"newcombe"`` (unpaired proportions), ``"normal"`` (unpaired means)
            or None.
        significant: the interval excludes 0; None without an interval.
    """

    name: str
    a: float | None
    b: float | None
    diff: float | None = None
    low: float | None = None
    high: float | None = None
    method: str | None = None
    significant: bool | None = None


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`compare_reports`.

    Attributes:
        a, b: the two reports.
        rows: metrics first (in A's order, then B's own), then compute fields.
        paired_items: items paired by index for the bootstrap; 0 when the intervals are unpaired.
        notes: why the comparison is unpaired, or what differs between the runs' settings.
    """

    a: EvalReport
    b: EvalReport
    rows: tuple[MetricDiff, ...]
    paired_items: int = 0
    notes: tuple[str, ...] = ()


def _metric_row(label: str, name_a: str, name_b: str, ra: EvalReport, rb: EvalReport, pa, pb, common: list[int],
                resamples: int, seed: int) -> MetricDiff:
    """B's metric ``name_b`` against A's ``name_a``: paired over ``common`` items when both records have them."""
    ma, mb = ra.metrics.get(name_a), rb.metrics.get(name_b)
    if ma is None or mb is None:
        return MetricDiff(label, ma.value if ma else None, mb.value if mb else None)
    pairs = [(pa[i]["scores"][name_a], pb[i]["scores"][name_b]) for i in common
             if name_a in pa[i]["scores"] and name_b in pb[i]["scores"]]
    if pairs:
        xs, ys = [float(x) for x, _ in pairs], [float(y) for _, y in pairs]
        diff, low, high = paired_bootstrap(xs, ys, resamples=resamples, seed=seed)
        value_a, value_b = ma.value, mb.value
        if len(pairs) < max(ma.n, mb.n):  # a run scored other items too: both sides over the paired ones
            value_a, value_b = round(sum(xs) / len(xs), 6), round(sum(ys) / len(ys), 6)
        return MetricDiff(label, value_a, value_b, diff, low, high, "paired bootstrap", low > 0 or high < 0)
    if name_a in MEAN_METRICS or name_b in MEAN_METRICS:
        diff = mb.value - ma.value
        se = math.hypot((ma.high - ma.low) / (2 * Z95), (mb.high - mb.low) / (2 * Z95))
        low, high, method = diff - Z95 * se, diff + Z95 * se, "normal"
    else:
        diff = mb.value - ma.value
        low, high = newcombe_interval(ma.value * ma.n, ma.n, mb.value * mb.n, mb.n)
        method = "newcombe"
    return MetricDiff(label, ma.value, mb.value, diff, low, high, method, low > 0 or high < 0)


def _as_report(x: EvalReport | str | Path) -> tuple[EvalReport, str | None]:
    """The report of ``x``, and a note when it is an unfinished run's (a run directory with its ``config.json``
    and no ``report.json`` yet: still running, or interrupted before ``--resume``): built from the items it has
    finished, as the finished run's report will be from all of them."""
    if isinstance(x, EvalReport):
        return x, None
    path = Path(x)
    if not (path.is_dir() and (path / CONFIG).exists() and not (path / REPORT_JSON).exists()):
        return load_report(path), None
    settings = read_run_settings(path)  # ManifestError (a LoaderError) names the file
    task = settings.get("task")
    if not isinstance(task, str):
        raise LoaderError(path / CONFIG, "not a dca eval run's settings (no task)")
    records = read_predictions(path / PREDICTIONS)
    if not records:
        raise LoaderError(path, "an unfinished dca eval run with no finished item yet (no report.json)")
    k = settings.get("samples") or max(len(r.get("samples") or ()) for r in records) or 1
    report = build_report(task, k, records, settings=settings, out_dir=path)
    return report, f"{path} is unfinished (no report.json): its {len(records)} finished items"


def _predictions(report: EvalReport) -> dict[int, dict] | None:
    if report.out_dir is None or not (Path(report.out_dir) / PREDICTIONS).exists():
        return None
    return {r["index"]: r for r in read_predictions(Path(report.out_dir) / PREDICTIONS)}


def compare_reports(a: EvalReport | str | Path, b: EvalReport | str | Path, *,
                    pairs: Sequence[tuple[str, str]] = (), resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> Comparison:
    """Compare run B with run A, metric by metric.

    With both ``predictions.jsonl`` files beside the reports (and the same item ids at the same indices),
    each metric's interval is a paired percentile bootstrap over the items both runs scored (``resamples``
    resamples, fixed ``seed``); otherwise it is unpaired: Newcombe's interval for proportions, a normal
    interval from the two reports' intervals for mean metrics (``f1``, ``pass@1``).

    Args:
        a, b: reports, or paths to ``report.json`` files or to the run directories holding them; a run directory
            without its report yet (a run still going, or interrupted) counts the items it has finished.
        pairs: more rows, each comparing A's metric with another metric of B, as ``(A's name, B's name)``: e.g.
            ``("accuracy", "weighted_vote@8")`` for greedy decoding against a verifier's choice among 8 samples
            (``dca eval compare --pair``); the row is named ``"accuracy vs weighted_vote@8"``.

    Returns:
        the rows of each metric, of each pair, and of each compute field, with B - A and, for metrics, its 95%
        interval.

    Raises:
        LoaderError: a report or predictions file cannot be read.
        ConfigError: a metric named in ``pairs`` is not in its run.
    """
    (ra, note_a), (rb, note_b) = _as_report(a), _as_report(b)
    notes: list[str] = [n for n in (note_a, note_b) if n]
    if ra.task != rb.task:
        notes.append(f"the runs are of different tasks ({ra.task} and {rb.task})")
    pa, pb = _predictions(ra), _predictions(rb)
    common: list[int] = []
    if pa is None or pb is None:
        missing = [name for name, p in (("A", pa), ("B", pb)) if p is None]
        notes.append(f"no predictions.jsonl beside {' and '.join(missing)}: unpaired intervals")
    else:
        common = sorted(set(pa) & set(pb))
        mismatched = [i for i in common if pa[i].get("id") != pb[i].get("id")]
        if mismatched:
            notes.append(f"{len(mismatched)} items have other ids at the same index (first: index {mismatched[0]}), "
                         "so the runs are not of the same data: unpaired intervals")
            common = []
        elif not common:
            notes.append("the runs share no item index: unpaired intervals")
        elif len(common) < max(len(pa), len(pb)):
            notes.append(f"paired over the {len(common)} items both runs scored")

    rows = [_metric_row(name, name, name, ra, rb, pa, pb, common, resamples, seed)
            for name in dict.fromkeys([*ra.metrics, *rb.metrics])]
    for name_a, name_b in pairs:
        for run, name, report in (("A", name_a, ra), ("B", name_b, rb)):
            if name not in report.metrics:
                raise ConfigError(f"--pair {name_a}:{name_b}: run {run} has no metric {name!r}; it has: "
                                  f"{', '.join(report.metrics)}")
        rows.append(_metric_row(f"{name_a} vs {name_b}", name_a, name_b, ra, rb, pa, pb, common, resamples, seed))
    for name in COMPUTE_FIELDS:
        va, vb = getattr(ra, name), getattr(rb, name)
        rows.append(MetricDiff(name, va, vb, vb - va))
    differing = settings_diff(ra.settings, rb.settings)
    if differing:
        notes.append("settings that differ: " + ", ".join(differing))
    return Comparison(ra, rb, tuple(rows), len(common) if any(r.method == "paired bootstrap" for r in rows) else 0,
                      tuple(notes))


def _short(value, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else "..." + text[-(width - 3):]  # a path keeps its file name


def settings_diff(a: dict, b: dict) -> list[str]:
    """The settings two runs do not share, as ``"KEY (A's value vs B's)"``; nested settings by dotted key
    (``assistant.repeat_penalty``), a key one run lacks (a setting newer than that run) as ``"KEY (only in B:
    value)"``. The data file's path and hash are left out: the pairing checks the items themselves."""
    out = []
    for k, va, vb in setting_pairs(a, b):
        if k in ("data", "data_sha256"):
            continue
        if va is MISSING:
            out.append(f"{k} (only in B: {_short(vb)})")
        elif vb is MISSING:
            out.append(f"{k} (only in A: {_short(va)})")
        elif va != vb:
            out.append(f"{k} ({_short(va)} vs {_short(vb)})")
    return out
