"""What the report shows of one bundle against PyTorch, accumulated chunk by chunk.

Per-class agreement, calibration (ECE) of both models on the labeled samples, the histogram
of per-sample logit differences and the worst disagreements (with the sample, to show it),
all in memory bounded by the number of classes and bins, not of samples.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

from .parity import LogHistogram
from .stats import softmax

__all__ = ["BundleFigures"]

CALIBRATION_BINS = 10


class _Calibration:
    """Per confidence bin: summed confidence, summed correctness, count."""

    def __init__(self) -> None:
        self.sums = np.zeros((CALIBRATION_BINS, 3))

    def add(self, logits: np.ndarray, labels: np.ndarray) -> None:
        probs = softmax(logits.astype(np.float64))
        confidence, correct = probs.max(1), probs.argmax(1) == labels
        which = np.minimum((confidence * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
        for column, values in enumerate((confidence, correct, np.ones_like(confidence))):
            self.sums[:, column] += np.bincount(which, weights=values, minlength=CALIBRATION_BINS)

    def rows(self) -> list[tuple[float, float, int]]:
        """(mean confidence, accuracy, count) of each bin that holds samples."""
        return [(c / n, a / n, int(n)) for c, a, n in self.sums if n]

    def ece(self) -> float:
        total = self.sums[:, 2].sum()
        return float(sum(n * abs(a - c) for c, a, n in self.rows()) / total)


class BundleFigures:
    """The report's figures of one bundle, added a chunk of samples at a time."""

    def __init__(self, classes: list[str], limit: int = 8) -> None:
        self.classes, self.limit = classes, limit
        self.by_class = np.zeros((len(classes), 2), np.int64)  # PyTorch's answers per class, bundle agreeing
        self.calibration = {"PyTorch": _Calibration(), "bundle": _Calibration()}
        self.labeled = 0
        self.diffs = LogHistogram(per_decade=4, low=1e-9, decades=14)
        self._worst: list[tuple[float, int, dict[str, Any]]] = []

    def add(self, start: int, items: list, labels: np.ndarray, reference: np.ndarray, logits: np.ndarray) -> None:
        """Add samples ``start`` … with their labels (-1 unknown), PyTorch's logits and the bundle's."""
        ref_top, top = reference.argmax(1), logits.argmax(1)
        self.by_class[:, 0] += np.bincount(ref_top, minlength=len(self.classes))
        self.by_class[:, 1] += np.bincount(ref_top[ref_top == top], minlength=len(self.classes))
        known = labels >= 0
        if known.any():
            self.labeled += int(known.sum())
            self.calibration["PyTorch"].add(reference[known], labels[known])
            self.calibration["bundle"].add(logits[known], labels[known])
        diff = np.abs(reference.astype(np.float64) - logits).max(1)
        self.diffs.add(diff)
        for i in np.flatnonzero(ref_top != top):
            self._keep(float(diff[i]), start + int(i), items[i], reference[i], logits[i])

    def _keep(self, diff: float, index: int, item: Any, reference: np.ndarray, logits: np.ndarray) -> None:
        """Keep the ``limit`` largest disagreements (the earliest first among equals)."""
        key = (diff, -index)
        if len(self._worst) == self.limit and key <= self._worst[0][:2]:
            return
        ref_p, bun_p = softmax(reference[None].astype(np.float64))[0], softmax(logits[None].astype(np.float64))[0]
        entry = {"index": index, "pytorch": [self.classes[int(ref_p.argmax())], float(ref_p.max())],
                 "bundle": [self.classes[int(bun_p.argmax())], float(bun_p.max())], "max_abs_diff": diff,
                 "item": item[:160] if isinstance(item, str) else item}
        (heapq.heapreplace if len(self._worst) == self.limit else heapq.heappush)(self._worst, (diff, -index, entry))

    def disagreements(self) -> list[dict[str, Any]]:
        """The worst disagreements, largest logit difference first, each with its sample."""
        return [entry for _, _, entry in sorted(self._worst, key=lambda w: (-w[0], -w[1]))]

    def details(self) -> dict[str, Any]:
        """Figures a person checks per bundle: per-class agreement, calibration (ECE), disagreements."""
        details: dict[str, Any] = {"per_class_agreement": {
            c: float(agree / n) for c, (n, agree) in zip(self.classes, self.by_class) if n}}
        if self.labeled:
            details["ece_reference"] = self.calibration["PyTorch"].ece()
            details["ece_bundle"] = self.calibration["bundle"].ece()
        details["disagreements"] = [{k: v for k, v in d.items() if k != "item"} for d in self.disagreements()]
        return details
