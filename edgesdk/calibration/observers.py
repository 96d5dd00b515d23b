"""Streaming statistics of activation tensors: exact min/max and a fixed-size histogram.

Memory per tensor is constant (``bins`` counts), whatever the number of samples or their
sequence lengths: when a batch falls outside the current range the histogram is widened
and the old counts are re-binned into the new edges.
"""

from __future__ import annotations

import numpy as np

from edgesdk.errors import InputError

__all__ = ["Histogram", "unpadded"]


class Histogram:
    """Counts of values over ``[lo, hi]`` in ``bins`` equal bins, plus the exact min and max."""

    def __init__(self, bins: int = 2048) -> None:
        self.bins = bins
        self.counts = np.zeros(bins, np.float64)
        self.lo = self.hi = None
        self.min, self.max = np.inf, -np.inf

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.bins + 1)

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def update(self, values: np.ndarray) -> None:
        """Add a batch of values (any shape)."""
        x = np.asarray(values, dtype=np.float32).ravel()
        if not x.size:
            return
        if not np.isfinite(x).all():
            raise InputError("a calibration sample produced NaN or infinite activations: check the calibration data")
        mn, mx = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, mn), max(self.max, mx)
        if self.lo is None:
            self.lo, self.hi = mn, mx if mx > mn else mn + max(1e-6, abs(mn) * 1e-2)
        elif mn < self.lo or mx > self.hi:
            self._widen(min(mn, self.lo), max(mx, self.hi))
        # float64 edges: float32 ones (numpy's for float32 data) collapse over a narrow range far from 0
        # (values within 1000 +- 0.05) or one of denormals (a MobileViT's near-zero activations)
        self.counts += np.histogram(x, self.bins, (np.float64(self.lo), np.float64(self.hi)))[0]

    def _widen(self, lo: float, hi: float) -> None:
        centers = (self.edges[:-1] + self.edges[1:]) / 2
        self.lo, self.hi = lo, hi
        self.counts = np.histogram(centers, self.bins, (lo, hi), weights=self.counts)[0]


def unpadded(value: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``value`` without its padded token positions (``mask`` 0) when its leading dims are the
    mask's (batch, sequence); padded positions are not real inputs. Other values as they are."""
    if mask is not None and value.shape[:2] == mask.shape:
        return value[mask.astype(bool)]
    return value
