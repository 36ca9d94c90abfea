"""``dca eval rescore``: judge the candidates of a sampled run with a verifier, without sampling again.

A ``dca eval --samples k`` run keeps each item's k candidates in ``predictions.jsonl`` (their text, thinking,
answer and whether it is right). Rescoring reads them, scores each with an outcome verifier
(:class:`dca.assistant.verifier.Verifier`, P(Yes)) and answers each item as the verifier strategy would have
(``best_of_n`` or ``weighted_vote``, :mod:`dca.assistant.strategies.verifier_search`), writing a new run directory
of the same format: the strategy's choice is ``accuracy``; ``best_of_n@k`` and ``weighted_vote@k`` are both
reported, beside the run's own ``maj@k`` and ``pass@k``. A process verifier (PRM, ``process=True``, the live run's
``--process-verifier``) judges each candidate as its last step, the whole solution asked "Are the steps so far
correct?" (the ``last`` aggregation of Hugging Face's search-and-learn; Lightman et al. 2023 take the product of
the steps' scores, which costs one call a step). Sampling is the costly part of search over k samples, so one
sampled run serves every verifier (the generate-then-score split of Hugging Face's search-and-learn).

The same candidates scored in the live run (``dca eval --samples k --verifier V``) get the same scores, so the
two paths report the same choices. ``seconds`` per item is the sampled run's plus the scoring's (the cost of the
strategy end to end); ``tokens.verifier`` counts the tokens the verifier decoded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

from ..errors import ConfigError, LoaderError, ManifestError
from ..paths import atomic_write_json, atomic_write_text, sha256_file
from ..progress import Progress, ProgressFn, emitter
from .harness import (
    CONFIG,
    PREDICTIONS,
    REPORT_JSON,
    REPORT_MD,
    _prepare_out_dir,
    append_record,
    read_predictions,
    read_run_settings,
)
from .report import EvalReport, build_report, to_markdown
from .tasks import get_task

__all__ = ["rescore_run"]


def _candidates(run: Path, records: list[dict]) -> None:
    for rec in records:
        rows = rec.get("samples")
        if not isinstance(rows, list) or len(rows) < 2 or not all(
                isinstance(r, dict) and isinstance(r.get("text"), str) and "correct" in r for r in rows):
            raise ConfigError(f"{run / PREDICTIONS}: item {rec['index']} keeps no candidates to rescore; rescoring "
                              "needs a run made with --samples k > 1 by a dca that keeps them (runs made before "
                              "dca eval rescore existed do not): run dca eval --samples k again")


def _rescored(rec: dict, verifier, choose, main: str, process: bool = False) -> dict:
    """``rec`` (a sampled run's prediction) with its candidates scored by ``verifier`` (as a process verifier
    judging the whole solution with ``process``) and answered by ``choose``
    (a :data:`~dca.assistant.strategies.verifier_search.VERIFIER_CHOICES` function): the chosen sample's output,
    ``main`` metric and tool calls, both verifier metrics, the scoring's tokens and seconds."""
    from ..assistant.types import Sample
    from ..assistant.verifier import solution_text
    from .harness import verifier_scores

    t0 = time.perf_counter()
    rows = rec["samples"]
    before = verifier.tokens
    scores = verifier.score(rec["question"], [solution_text(r.get("thinking", ""), r["text"]) for r in rows],
                            process=process)
    samples = tuple(Sample(r["text"], r.get("thinking", ""), r.get("answer"), r.get("mean_logprob", 0.0),
                           r.get("tokens", 0), r.get("finish", "stop"), score=float(p)) for r, p in zip(rows, scores))
    chosen = choose(samples)
    pick = rows[chosen]
    new = {**rec, "samples": [{**r, "score": round(s.score, 6)} for r, s in zip(rows, samples)],
           "sample_scores": [round(s.score, 6) for s in samples], "chosen": chosen,
           "extracted": pick.get("answer"), "output": pick["text"], "thinking": pick.get("thinking", ""),
           "truncated": bool(pick["text"].strip()) and pick.get("finish") == "length",
           "scores": {**rec["scores"], main: int(bool(pick["correct"])), **verifier_scores(samples, rows)},
           "tokens": {**rec["tokens"], "verifier": verifier.tokens - before}}
    if "tool_calls" in pick:
        new["tool_calls"] = pick["tool_calls"]
    scoring = time.perf_counter() - t0
    new["verifier_seconds"] = round(scoring, 3)
    new["seconds"] = round(rec.get("seconds", 0.0) + scoring, 3)
    return new


def rescore_run(run: str | Path, verifier, out_dir: str | Path, *, strategy: str = "weighted_vote",
                process: bool = False, resume: bool = False, force: bool = False,
                progress: ProgressFn | None = None) -> EvalReport:
    """Rescore the k candidates of each item of the sampled run ``run`` with ``verifier``.

    Args:
        run: a ``dca eval`` run directory made with ``--samples k`` (k > 1).
        verifier: a :class:`~dca.assistant.verifier.Verifier`, or a GGUF path / model name to load as one.
        out_dir: the new run directory; its ``predictions.jsonl`` is written one item at a time, so an interrupted
            rescoring continues with ``resume``.
        strategy: ``weighted_vote`` or ``best_of_n``: the choice reported as ``accuracy`` (both are reported as
            ``NAME@k``).
        process: ``verifier`` is a process verifier (``dca distill verifier --process`` data): each candidate is
            scored by P(Yes) to "Are the steps so far correct?" after its last step; otherwise P(Yes) to "Is this
            solution correct?".
        resume, force: as ``dca eval``'s ``--resume`` and ``--force``.
        progress: called with a :class:`~dca.progress.Progress` (job ``rescore``, unit ``items``).

    Returns:
        the report, also written as ``report.json`` and ``report.md`` in ``out_dir``.

    Raises:
        LoaderError: ``run`` is not a dca eval run, or its predictions are corrupt.
        ConfigError: the run kept no candidates (no ``--samples``, or made before they were recorded), the
            strategy is unknown, or ``out_dir`` is not empty (without ``resume``/``force``) or was rescored with
            other settings.
        ModelError: the verifier cannot be loaded (the message names the file and ``--verifier``).
    """
    from ..assistant.strategies.verifier_search import VERIFIER_CHOICES
    from ..assistant.verifier import Verifier

    if strategy not in VERIFIER_CHOICES:
        raise ConfigError(f"--strategy {strategy!r}: choose {' | '.join(VERIFIER_CHOICES)}")
    run, out_dir = Path(run).expanduser(), Path(out_dir).expanduser()
    try:
        stored_settings = read_run_settings(run)
    except ManifestError as e:
        raise LoaderError(run / CONFIG, f"not a dca eval run ({e.reason}); give the directory of a "
                                        "dca eval --samples k run") from e
    if out_dir.resolve() == run.resolve():
        raise ConfigError(f"-o/--out-dir {out_dir} is the sampled run itself; choose a new directory")
    records = read_predictions(run / PREDICTIONS)
    if not records:
        raise LoaderError(run / PREDICTIONS, "no finished item to rescore")
    _candidates(run, records)
    task = get_task(stored_settings["task"])
    k = len(records[0]["samples"])

    emit = emitter(progress)
    if not isinstance(verifier, Verifier):
        emit(Progress("rescore", phase="loading the verifier"))
        verifier = Verifier(verifier)
    model = Path(verifier.llm.path).resolve() if getattr(verifier.llm, "path", None) else verifier.name
    settings = json.loads(json.dumps(stored_settings))
    settings["assistant"] = {**settings.get("assistant", {}), "verifier": str(model), "strategy": strategy}
    settings["assistant"]["process_verifier"] = process
    settings["rescored"] = {"run": str(run.resolve()), "predictions_sha256": sha256_file(run / PREDICTIONS)}
    earlier = _prepare_out_dir(SimpleNamespace(out_dir=out_dir, resume=resume, force=force), settings)
    main = task.main_metric
    done, correct = {r["index"] for r in earlier}, sum(r["scores"][main] for r in earlier)

    def report_progress():
        emit(Progress("rescore", done=len(done), total=len(records), unit="items",
                      metrics={main: correct / len(done)} if done else {}))

    report_progress()
    with open(out_dir / PREDICTIONS, "a", encoding="utf-8") as f:
        for rec in records:
            if rec["index"] in done:
                continue
            new = _rescored(rec, verifier, VERIFIER_CHOICES[strategy], main, process)
            append_record(f, new)
            done.add(rec["index"])
            correct += new["scores"][main]
            report_progress()

    report = build_report(task.name, k, read_predictions(out_dir / PREDICTIONS), settings=settings, out_dir=out_dir)
    atomic_write_json(out_dir / REPORT_JSON, report.to_dict())
    atomic_write_text(out_dir / REPORT_MD, to_markdown(report))
    return report
