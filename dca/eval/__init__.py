"""Evaluation: accuracy of the assistant on GSM8K-, MATH- and SQuAD-shaped JSONL, resumable, with intervals.

run (:func:`run_eval`, one flushed prediction line per item) -> report (:func:`build_report`, from
``predictions.jsonl`` alone; Wilson intervals; maj@k and pass@k when k > 1) -> compare
(:func:`compare_reports`, paired bootstrap over items). A sampled run's candidates can be judged by a verifier
afterwards without sampling again (:func:`rescore_run`). The run directory's files are described in
:mod:`dca.eval.harness`. Importing this package loads no model, store or math-verify.

Example:
    >>> from dca.eval import EvalConfig, run_eval
    >>> report = run_eval(EvalConfig(task="gsm8k", data="gsm8k_test.jsonl", limit=50, out_dir="runs/base"))
    >>> report.main.value, (report.main.low, report.main.high)
"""

from .compare import Comparison, MetricDiff, compare_reports
from .harness import EvalConfig, read_predictions, run_eval
from .report import EvalReport, Metric, build_report, load_report
from .rescore import rescore_run
from .stats import newcombe_interval, paired_bootstrap, pass_at_k, wilson_interval
from .tasks import Item, SkippedLine, load_items

__all__ = [
    "Comparison", "EvalConfig", "EvalReport", "Item", "Metric", "MetricDiff", "SkippedLine", "build_report",
    "compare_reports", "load_items", "load_report", "newcombe_interval", "paired_bootstrap", "pass_at_k",
    "read_predictions", "rescore_run", "run_eval", "wilson_interval",
]
