"""Range methods: pick an activation's quantization range [lo, hi] from its histogram.

- ``minmax``: the exact min and max seen.
- ``percentile``: clip each tail at ``100 - percentile`` percent of the values.
- ``entropy``: TensorRT's calibrator: the |x| threshold whose 128-level quantized histogram
  has the least KL divergence from the clipped original.
- ``mse``: the range whose uint8 quantization has the least expected squared error over the
  histogram (clipping error outside the range, uniform rounding noise inside).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgesdk.registry import Registry

from .observers import Histogram

__all__ = ["RANGE_METHODS", "activation_range"]

RangeMethod = Callable[[Histogram], tuple[float, float]]
RANGE_METHODS: Registry[RangeMethod] = Registry("range method")
PERCENTILE = 99.99


def _centers(h: Histogram) -> np.ndarray:
    edges = h.edges
    return (edges[:-1] + edges[1:]) / 2


@RANGE_METHODS.register("minmax")
def minmax(h: Histogram) -> tuple[float, float]:
    return h.min, h.max


@RANGE_METHODS.register("percentile")
def percentile(h: Histogram, pct: float = PERCENTILE) -> tuple[float, float]:
    cdf = np.cumsum(h.counts) / h.total
    edges = h.edges
    lo = edges[np.searchsorted(cdf, 1 - pct / 100, side="right")]
    hi = edges[min(np.searchsorted(cdf, pct / 100) + 1, h.bins)]
    return max(float(lo), h.min), min(float(hi), h.max)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p / p.sum(), q / q.sum()
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / np.maximum(q[nz], 1e-12))))


@RANGE_METHODS.register("entropy")
def entropy(h: Histogram, levels: int = 128) -> tuple[float, float]:
    amax = max(abs(h.min), abs(h.max))
    hist = np.histogram(np.abs(_centers(h)), h.bins, (0, amax), weights=h.counts)[0]
    edges = np.linspace(0, amax, h.bins + 1)
    best, best_i = np.inf, h.bins
    for i in range(levels, h.bins + 1, max(1, h.bins // 512)):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        groups = np.array_split(np.arange(i), levels)
        q = np.zeros(i)
        for g in groups:
            used = hist[g] > 0
            if used.any():
                q[g[used]] = hist[g].sum() / used.sum()
        if p.sum() == 0:
            continue
        kl = _kl(p, q)
        if kl < best:
            best, best_i = kl, i
    threshold = float(edges[best_i])
    return max(h.min, -threshold), min(h.max, threshold)


@RANGE_METHODS.register("mse")
def mse(h: Histogram, steps: int = 40) -> tuple[float, float]:
    c, w = _centers(h), h.counts
    shrink = np.linspace(1 / steps, 1, steps)
    lo = np.minimum(h.min * shrink, 0)[:, None]
    hi = np.maximum(h.max * shrink, 1e-12)[None, :]
    best, best_range = np.inf, (h.min, h.max)
    for row in range(steps):  # candidates: every pair of shrunk ends (row: lo, columns: hi)
        scale = (hi - lo[row]) / 255
        clipped = np.clip(c[:, None], lo[row], hi)
        # values inside the range carry uniform rounding noise (scale^2 / 12); outside, the clipping error
        err = (w[:, None] * np.where(clipped == c[:, None], scale**2 / 12, (c[:, None] - clipped) ** 2)).sum(0)
        col = int(err.argmin())
        if err[col] < best:
            best, best_range = float(err[col]), (float(lo[row, 0]), float(hi[0, col]))
    return best_range


def activation_range(h: Histogram, method: str) -> tuple[float, float]:
    """[lo, hi] for ``method`` (one of ``RANGE_METHODS``), widened to hold 0 as uint8 needs."""
    lo, hi = RANGE_METHODS.get(method)(h)
    return min(lo, 0.0), max(hi, 0.0)
