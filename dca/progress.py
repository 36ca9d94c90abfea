"""The one progress event of dca's long jobs (ingest, eval, import, generate, filter, train, export, check and
the chain of ``dca distill run``), in the manner of mlx-lm's ``TrainingCallback``: a job calls
``progress(Progress(...))``; the CLI draws every event with one renderer, and a GUI host shows the same
events its own way. Library code never prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

EventKind = Literal["update", "start", "skip", "done"]


@dataclass(frozen=True)
class Progress:
    """Where a long job stands.

    Attributes:
        job: what runs: ``ingest``, ``eval``, ``import``, ``generate``, ``filter``, ``train``, ``export``,
            ``check``, or the stage name of a ``dca distill run`` chain.
        phase: what the job is doing now, for jobs of several phases (``checking``, ``selecting``, ``load``,
            ``write``, ``quantize``, ``loading the reference ...``); "" otherwise.
        done: units finished, earlier runs of a resumed job included; None for an event without counts
            (a new phase, a start).
        total: units planned; None while unknown.
        unit: what ``done`` counts: ``chunks``, ``items``, ``traces``, ``samples``, ``steps``; "" for none.
        metrics: figures so far by name, numbers in SI units and fractions in [0, 1]: ``accuracy``,
            ``em`` (running main metric of eval), ``loss``, ``eval_loss`` (nats), ``lr``, ``epoch``,
            ``tokens_per_s``, ``samples_per_s``, ``elapsed_s``, ``eta_s`` (seconds), ``acceptance``,
            ``accepted``, ``judged``, ``written``, ``failed``, ``files_done``, ``files_total``, ``tokens_seen``.
        event: ``update`` for ordinary progress; a chain's stages also send ``start``, ``skip`` (up to date)
            and ``done``.
    """

    job: str
    phase: str = ""
    done: int | None = None
    total: int | None = None
    unit: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    event: EventKind = "update"


ProgressFn = Callable[[Progress], None]


def emitter(progress: ProgressFn | None) -> ProgressFn:
    """``progress``, or a callback that does nothing when it is None."""
    return progress if progress is not None else (lambda event: None)
