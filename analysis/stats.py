"""The best-of-m bootstrap of pycls' sweep error bars, computed exactly (no sampling).

pycls draws m = max(1, round(subsample * n)) of a group's n runs with replacement, keeps the best,
repeats 2500 times and reports percentiles of those bests. The best of m such draws is at most the
i-th smallest error (ties broken by position) with probability 1 - ((n - i) / n) ** m, so each
percentile of that distribution is an order statistic found in closed form: the q-quantile is the
i-th smallest error for the least i with 1 - ((n - i) / n) ** m >= q (the "lower" quantile of a
discrete distribution). Both the EDF figures' bands and the claims table use it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def best_of_rank(n: int, subsample: float, q: float) -> int:
    """The 1-based rank i of the q-quantile of the best of m draws from n runs (see the module)."""
    m = max(1, round(subsample * n))
    return min(n, max(1, math.ceil(n * (1.0 - (1.0 - q) ** (1.0 / m)) - 1e-9)))


def best_of_quantiles(x: np.ndarray, subsample: float, qs: Sequence[float] = (0.025, 0.5, 0.975)) -> np.ndarray:
    """Quantiles qs of the best of m runs drawn with replacement from the last axis of x.

    x: (..., n) errors; returns (..., len(qs)). Exact: each quantile is an order statistic of x.
    """
    x = np.asarray(x, dtype=float)
    n = x.shape[-1]
    ranks = [best_of_rank(n, subsample, q) - 1 for q in qs]
    return np.sort(x, axis=-1)[..., ranks]
