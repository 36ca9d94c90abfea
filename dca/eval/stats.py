"""Interval estimates for evaluation metrics: Wilson, Newcombe, normal, paired bootstrap; pass@k.

Sources:
    * Wilson 1927, "Probable inference, the law of succession, and statistical inference": the score
      interval for a binomial proportion, well behaved near 0 and 1 and for small n.
    * Newcombe 1998, "Interval estimation for the difference between independent proportions" (method
      10): the difference of two proportions from their Wilson intervals.
    * Chen et al. 2021, "Evaluating Large Language Models Trained on Code": the unbiased pass@k
      estimator from n samples of which c are correct.
    * Efron & Tibshirani 1993, "An Introduction to the Bootstrap": percentile intervals; resampling items
      with both systems' scores kept together (paired) accounts for per-item difficulty.
    * Hanley & McNeil 1982, "The meaning and use of the area under a ROC curve": AUROC as the Mann-Whitney
      probability that a random positive scores above a random negative (ties count one half).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion.

    Args:
        successes: number of successes (a float is accepted for a mean of 0/1 values).
        n: number of trials; 0 gives the uninformative (0.0, 1.0).
        z: the normal quantile; the default gives a 95% interval.

    Returns:
        (low, high) in [0, 1]; e.g. 8 of 10 gives (0.490, 0.943).
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def newcombe_interval(successes_a: float, n_a: int, successes_b: float, n_b: int,
                      z: float = Z95) -> tuple[float, float]:
    """Interval for the difference of two independent proportions, p_b - p_a (Newcombe's method 10).

    Returns:
        (low, high) in [-1, 1].
    """
    pa = successes_a / n_a if n_a else 0.0
    pb = successes_b / n_b if n_b else 0.0
    la, ua = wilson_interval(successes_a, n_a, z)
    lb, ub = wilson_interval(successes_b, n_b, z)
    d = pb - pa
    return d - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2), d + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)


def mean_interval(values: Sequence[float], z: float = Z95, *, lo: float = 0.0, hi: float = 1.0) -> tuple[float, float]:
    """Normal-approximation interval of a mean (for scores in [0, 1] that are not 0/1, like token F1).

    Returns:
        (low, high), mean -+ z * sample standard deviation / sqrt(n), clipped to [lo, hi]; (lo, hi) for
        fewer than 2 values.
    """
    n = len(values)
    if n < 2:
        return lo, hi
    arr = np.asarray(values, dtype=np.float64)
    half = z * float(arr.std(ddof=1)) / math.sqrt(n)
    m = float(arr.mean())
    return max(lo, m - half), min(hi, m + half)


def auroc(scores: Sequence[float], labels: Sequence[int | bool]) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels``: the probability that a random positive
    scores above a random negative, ties counted one half (Mann-Whitney U / (n_pos * n_neg), from mid-ranks).
    1.0 ranks every positive first, 0.5 is chance.

    Raises:
        ValueError: the lengths differ, or the labels are not both present.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"{len(s)} scores but {len(y)} labels")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        raise ValueError(f"AUROC needs positive and negative labels, got {n_pos} and {n_neg}")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # mid-ranks over runs of equal scores
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021).

    pass@k = 1 - C(n - c, k) / C(n, k), computed as a stable product; e.g. n=5, c=2, k=1 gives 0.4,
    and k = n gives 1.0 when any sample is correct.

    Raises:
        ValueError: not 0 <= c <= n, or not 1 <= k <= n.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED, z: float = Z95) -> tuple[float, float, float]:
    """Percentile bootstrap interval of mean(b) - mean(a) over paired items.

    Items are resampled with replacement, each keeping its pair of scores; the seed is fixed so the same
    inputs always give the same interval.

    Args:
        a, b: per-item scores of the two systems, the same length, item i in both.
        resamples: number of bootstrap resamples.
        z: the normal quantile that sets the coverage (the default gives 95%).

    Returns:
        (difference, low, high).

    Raises:
        ValueError: the sequences are empty or of different lengths.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired bootstrap needs two equally long, non-empty score lists, got {len(a)} and {len(b)}")
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    tail = 100 * (1 - math.erf(z / math.sqrt(2))) / 2  # 2.5 for z = 1.96
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(d.mean()), float(low), float(high)
