"""Confidence bounds for the parity gates: agreement is a proportion, accuracy drop a paired difference.

A gate judged on a point estimate flips with the machine when the sample is small: one changed
answer in 60 is 1.7 points. These bounds say what the samples can show. Numpy and the standard
library only, so the torch-free runtime shares them.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

__all__ = ["wilson_interval", "paired_drop_upper", "samples_to_show", "labels_to_show", "z_score", "softmax"]


def z_score(confidence: float) -> float:
    """The one-sided standard normal quantile of ``confidence`` (0.95 -> 1.645)."""
    return NormalDist().inv_cdf(confidence)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """One-sided Wilson score bounds (lower, upper) of a proportion, each at ``confidence``."""
    if n <= 0:
        return 0.0, 1.0
    z = z_score(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_drop_upper(lost: int, gained: int, n: int, confidence: float = 0.95) -> float:
    """Upper bound of an accuracy drop measured on the same samples (Agresti-Min adjusted).

    ``lost``: samples the reference got right and the candidate wrong; ``gained``: the reverse.
    """
    if n <= 0:
        return 1.0
    b, c, m = lost + 0.5, gained + 0.5, n + 2
    d = (b - c) / m
    return d + z_score(confidence) * math.sqrt(max((b + c) / m - d * d, 0.0) / m)


def labels_to_show(max_drop: float, confidence: float = 0.95) -> int:
    """The fewest labeled samples whose accuracy-drop upper bound can be within ``max_drop``
    (with no answer lost or gained)."""
    return max(1, math.ceil(z_score(confidence) / max(max_drop, 1e-9)) - 2)


def samples_to_show(threshold: float, confidence: float = 0.95, changed: int = 0) -> int | None:
    """The fewest samples whose agreement, with ``changed`` of them disagreeing, has a lower bound
    at or above ``threshold``; None when no count can (threshold 1)."""
    if threshold >= 1.0:
        return None
    n = max(changed + 1, 1)
    while wilson_interval(n - changed, n, confidence)[0] < threshold:
        n = n * 2 if n < 1 << 30 else n + 1
        if n > 1 << 31:
            return None
    low = max(n // 2, changed)
    while low + 1 < n:  # bisect between a count that cannot and one that can
        mid = (low + n) // 2
        if wilson_interval(mid - changed, mid, confidence)[0] >= threshold:
            n = mid
        else:
            low = mid
    return n


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (samples x classes) logits."""
    z = np.exp(logits - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)
