"""Voting over sampled answers (self-consistency): cluster equivalent final answers and rank the clusters.

Majority voting is Wang et al. 2022, "Self-Consistency Improves Chain of Thought Reasoning in Language
Models"; the weighted vote sums each sample's exp(mean token log-probability), as their
"weighted sum" variant. The assistant votes over its k samples; evaluation votes over sample answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

VOTES = ("majority", "logprob")


@dataclass(frozen=True)
class Vote:
    """A cluster of equivalent answers.

    Attributes:
        answer: its representative (the first answer seen in the cluster).
        count: samples in it.
        weight: the sum of exp(mean token log-probability) of its samples (1 each without confidences).
    """

    answer: str
    count: int
    weight: float


def vote(answers: Sequence[str | None], confidences: Sequence[float] | None = None, *, weighted: bool = False,
         same: Callable[[str, str], bool] | None = None) -> tuple[Vote, ...]:
    """Cluster ``answers`` under ``same`` and rank the clusters.

    Majority voting ranks by count, then summed weight; weighted voting by summed weight, then count;
    remaining ties keep the order first seen. None answers (no extractable answer) do not vote.

    Args:
        answers: the final answer of each sample, or None.
        confidences: each sample's mean natural-log token probability (same length); None counts 0.0 each.
        weighted: rank by weight (``--vote logprob``) instead of count (``--vote majority``).
        same: answer equality; default :func:`dca.grading.is_equivalent`.

    Returns:
        the votes, best first (empty when no sample has an answer).

    Raises:
        ValueError: ``confidences`` is not as long as ``answers``.
    """
    if same is None:
        from .grading import is_equivalent as same
    if confidences is None:
        confidences = [0.0] * len(answers)
    if len(confidences) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(confidences)} confidences")
    clusters: list[list] = []  # [representative, count, weight]
    for answer, logprob in zip(answers, confidences):
        if answer is None:
            continue
        for c in clusters:
            if same(answer, c[0]):
                c[1] += 1
                c[2] += math.exp(logprob)
                break
        else:
            clusters.append([answer, 1, math.exp(logprob)])
    key = (lambda c: (c[2], c[1])) if weighted else (lambda c: (c[1], c[2]))
    return tuple(Vote(a, n, w) for a, n, w in sorted(clusters, key=key, reverse=True))
