"""Parity results are values: error statistics, agreement, accuracy, and a pass/fail verdict.

Numpy only, so the torch-free runtime can run a bundle's self-check with the same maths.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import InputError

__all__ = ["Thresholds", "ParityResult", "compare", "skipped", "default_thresholds"]


@dataclass(frozen=True)
class Thresholds:
    """What a bundle must meet; ``None`` disables a check."""

    max_abs_diff: float | None = 1e-4
    min_agreement: float = 0.99
    max_accuracy_drop: float | None = None

    def __post_init__(self) -> None:
        if self.max_abs_diff is not None and self.max_abs_diff < 0:
            raise InputError(f"max_abs_diff must be >= 0, got {self.max_abs_diff}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise InputError(f"min_agreement must lie in [0, 1], got {self.min_agreement}")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise InputError(f"max_accuracy_drop must be >= 0, got {self.max_accuracy_drop}")


_DEFAULTS = {
    "fp32": Thresholds(max_abs_diff=1e-4, min_agreement=0.99),
    "fp16": Thresholds(max_abs_diff=1e-2, min_agreement=0.99),
    "int8": Thresholds(max_abs_diff=None, min_agreement=0.99, max_accuracy_drop=0.005),
}


def default_thresholds(precision: str) -> Thresholds:
    """The default thresholds of a precision (fp32 exact to 1e-4, int8 bounded by agreement)."""
    try:
        return _DEFAULTS[precision]
    except KeyError:
        raise InputError(f"unknown precision {precision!r}; known: {', '.join(_DEFAULTS)}") from None


@dataclass(frozen=True)
class ParityResult:
    """How a bundle's logits compare with PyTorch's on the same inputs; truthy when it passes."""

    status: Literal["pass", "fail", "skipped"]
    reason: str
    thresholds: Thresholds
    samples: int = 0
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    p99_abs_diff: float | None = None
    agreement: float | None = None
    accuracy_reference: float | None = None
    accuracy_bundle: float | None = None
    failures: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParityResult:
        d = dict(d)
        d["thresholds"] = Thresholds(**d["thresholds"])
        return cls(**d)


def skipped(reason: str, thresholds: Thresholds) -> ParityResult:
    """A parity that could not run here, with the reason a person reads."""
    return ParityResult(status="skipped", reason=reason, thresholds=thresholds)


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    thresholds: Thresholds,
    labels: np.ndarray | None = None,
) -> ParityResult:
    """Compare logits (samples x classes); ``labels`` (-1 = unknown) adds accuracies."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape or reference.ndim != 2 or len(reference) == 0:
        raise InputError(
            f"cannot compare logits of shapes {reference.shape} and {candidate.shape}: "
            "both must be (samples, classes) with at least one sample"
        )
    diff = np.abs(reference - candidate)
    ref_top = reference.argmax(1)
    cand_top = candidate.argmax(1)
    acc_ref = acc_cand = None
    if labels is not None and (np.asarray(labels) >= 0).any():
        known = np.asarray(labels) >= 0
        acc_ref = float((ref_top[known] == labels[known]).mean())
        acc_cand = float((cand_top[known] == labels[known]).mean())
    stats = dict(
        samples=len(reference),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        p99_abs_diff=float(np.quantile(diff.max(1), 0.99)),
        agreement=float((ref_top == cand_top).mean()),
        accuracy_reference=acc_ref,
        accuracy_bundle=acc_cand,
    )
    failures = []
    t = thresholds
    if t.max_abs_diff is not None and stats["max_abs_diff"] > t.max_abs_diff:
        failures.append(f"max abs logit diff {stats['max_abs_diff']:.3g} > {t.max_abs_diff:.3g}")
    if stats["agreement"] < t.min_agreement:
        failures.append(f"top-1 agreement {stats['agreement']:.2%} < {t.min_agreement:.2%}")
    if t.max_accuracy_drop is not None and acc_ref is not None and acc_cand is not None:
        if acc_ref - acc_cand > t.max_accuracy_drop:
            failures.append(
                f"accuracy drop {acc_ref - acc_cand:.2%} > {t.max_accuracy_drop:.2%}"
            )
    status = "fail" if failures else "pass"
    reason = "; ".join(failures) if failures else "within thresholds"
    return ParityResult(status=status, reason=reason, thresholds=t, failures=failures, **stats)
