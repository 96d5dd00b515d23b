"""Parity results are values: error statistics, agreement, accuracy, and a pass/fail verdict.

Numpy only, so the torch-free runtime can run a bundle's self-check with the same maths.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np

from .errors import InputError
from .stats import labels_to_show, paired_drop_upper, samples_to_show, wilson_interval

__all__ = ["Thresholds", "ParityResult", "compare", "gates", "skipped", "default_thresholds"]


@dataclass(frozen=True)
class Thresholds:
    """What a bundle must meet; ``None`` disables a check.

    Logits must satisfy ``|bundle - ref| <= max_abs_diff + rtol * |ref|`` element-wise (as
    Polygraphy does). With ``confidence`` set, agreement passes when its lower Wilson bound
    clears ``min_agreement`` and the accuracy drop when its upper bound stays within
    ``max_accuracy_drop`` (both one-sided at ``confidence``), not on the point estimates.
    """

    max_abs_diff: float | None = 1e-4
    min_agreement: float = 0.99
    max_accuracy_drop: float | None = None
    rtol: float = 0.0
    confidence: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_abs_diff", "min_agreement", "max_accuracy_drop", "rtol", "confidence"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                      or not math.isfinite(value)):
                raise InputError(f"threshold {name} must be a finite number, got {value!r}")
        if self.max_abs_diff is not None and self.max_abs_diff < 0:
            raise InputError(f"max_abs_diff must be >= 0, got {self.max_abs_diff}")
        if self.rtol < 0:
            raise InputError(f"rtol must be >= 0, got {self.rtol}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise InputError(f"min_agreement must lie in [0, 1], got {self.min_agreement}")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise InputError(f"max_accuracy_drop must be >= 0, got {self.max_accuracy_drop}")
        if self.confidence is not None and not 0.5 <= self.confidence < 1.0:
            raise InputError(f"confidence must lie in [0.5, 1), got {self.confidence}")


_DEFAULTS = {
    "fp32": Thresholds(max_abs_diff=1e-4, min_agreement=0.99, rtol=1e-5),
    "fp16": Thresholds(max_abs_diff=1e-2, min_agreement=0.99, rtol=1e-3),
    "int8": Thresholds(max_abs_diff=None, min_agreement=0.99, max_accuracy_drop=0.005, confidence=0.95),
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
    agreeing: int | None = None
    agreement_lower: float | None = None
    agreement_upper: float | None = None
    labeled: int = 0
    lost: int = 0
    gained: int = 0
    accuracy_drop_upper: float | None = None
    worst_tolerance_ratio: float | None = None
    samples_needed: int | None = None
    notes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParityResult:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["thresholds"] = Thresholds(**d["thresholds"])
        return cls(**d)


def gates(result: ParityResult) -> list[tuple[str, str, str]]:
    """Each gate of a parity result on its own: (gate, "pass" | "fail" | "skipped", message).

    An accuracy drop that the labels cannot show is "skipped" (agreement still bounds it).
    """
    if result.status == "skipped":
        return [("parity", "skipped", result.reason)]
    t, stats = result.thresholds, asdict(result)
    out = []
    if t.max_abs_diff is not None:
        ok = (result.worst_tolerance_ratio or 0.0) <= 1
        out.append(("logits", "pass" if ok else "fail", f"max |Δlogit| {result.max_abs_diff:.3g}, allowed "
                    f"{t.max_abs_diff:.3g} + {t.rtol:.3g}·|logit|"))
    failed = _agreement_failures(stats, t)
    out.append(("top-1 agreement", "fail" if failed else "pass", failed[0] if failed else
                f"{result.agreement:.2%} ({result.agreeing}/{result.samples}), lower bound "
                f"{result.agreement_lower:.2%} >= {t.min_agreement:.2%}"))
    if t.max_accuracy_drop is not None and result.accuracy_reference is not None:
        failed = _accuracy_failures(stats, t)
        status = ("skipped" if _accuracy_not_shown(stats, t) else "fail") if failed else "pass"
        out.append(("accuracy drop", status, failed[0] if failed else
                    f"{result.accuracy_reference - result.accuracy_bundle:+.2%} ({result.lost} lost, "
                    f"{result.gained} gained of {result.labeled}) <= {t.max_accuracy_drop:.2%}"))
    if result.status == "fail" and all(status != "fail" for _, status, _ in out):
        out.append(("verdict", "fail", result.reason))
    return out


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
    t = thresholds
    diff = np.abs(reference - candidate)
    ref_top, cand_top = reference.argmax(1), candidate.argmax(1)
    stats: dict[str, Any] = dict(
        samples=len(reference),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        p99_abs_diff=float(np.quantile(diff.max(1), 0.99)),
        **_agreement_stats(ref_top == cand_top, t),
        **_accuracy_stats(ref_top, cand_top, labels, t),
    )
    failures = []
    if t.max_abs_diff is not None:
        allowed = t.max_abs_diff + t.rtol * np.abs(reference)
        ratio = float(np.max(np.where(allowed > 0, diff / np.maximum(allowed, 1e-300), np.where(diff > 0, np.inf, 0))))
        stats["worst_tolerance_ratio"] = ratio
        if ratio > 1:
            failures.append(f"max abs logit diff {stats['max_abs_diff']:.3g} exceeds atol {t.max_abs_diff:.3g}"
                            + (f" + rtol {t.rtol:.3g}·|logit|" if t.rtol else ""))
    failures += _agreement_failures(stats, t)
    notes: list[str] = []
    (notes if _accuracy_not_shown(stats, t) else failures).extend(_accuracy_failures(stats, t))
    status = "fail" if failures else "pass"
    reason = "; ".join(failures) if failures else "within thresholds"
    return ParityResult(status=status, reason=reason, thresholds=t, failures=failures, notes=notes, **stats)


def _accuracy_not_shown(stats: dict[str, Any], t: Thresholds) -> bool:
    """True when the accuracy-drop gate is judged on its bound but the labeled samples cannot show it:
    too few of them even with nothing lost, or no drop measured while the bound stays above the
    budget. It is then reported as not shown instead of failing (agreement still bounds it)."""
    if t.confidence is None or t.max_accuracy_drop is None or stats["accuracy_reference"] is None:
        return False
    drop = stats["accuracy_reference"] - stats["accuracy_bundle"]
    return stats["labeled"] < labels_to_show(t.max_accuracy_drop, t.confidence) or drop <= 0


def _agreement_stats(agree: np.ndarray, t: Thresholds) -> dict[str, Any]:
    n, k = len(agree), int(agree.sum())
    lower, upper = wilson_interval(k, n, t.confidence or 0.95)
    needed = samples_to_show(t.min_agreement, t.confidence, 0) if t.confidence else None
    return {"agreement": k / n, "agreeing": k, "agreement_lower": lower, "agreement_upper": upper,
            "samples_needed": needed}


def _accuracy_stats(ref_top: np.ndarray, cand_top: np.ndarray, labels: np.ndarray | None,
                    t: Thresholds) -> dict[str, Any]:
    if labels is None or not (np.asarray(labels) >= 0).any():
        return {"accuracy_reference": None, "accuracy_bundle": None}
    known = np.asarray(labels) >= 0
    ref_ok, cand_ok = ref_top[known] == labels[known], cand_top[known] == labels[known]
    lost, gained = int((ref_ok & ~cand_ok).sum()), int((~ref_ok & cand_ok).sum())
    return {"accuracy_reference": float(ref_ok.mean()), "accuracy_bundle": float(cand_ok.mean()),
            "labeled": int(known.sum()), "lost": lost, "gained": gained,
            "accuracy_drop_upper": paired_drop_upper(lost, gained, int(known.sum()), t.confidence or 0.95)}


def _agreement_failures(stats: dict[str, Any], t: Thresholds) -> list[str]:
    n, k = stats["samples"], stats["agreeing"]
    if t.confidence is None:
        if stats["agreement"] < t.min_agreement:
            return [f"top-1 agreement {stats['agreement']:.2%} ({k}/{n}) < {t.min_agreement:.2%}"]
        return []
    if stats["agreement_lower"] >= t.min_agreement:
        return []
    needed = stats["samples_needed"]
    if needed is not None and n < needed and k == n:
        return [f"{n} samples cannot show top-1 agreement >= {t.min_agreement:.2%} at {t.confidence:.0%} "
                f"confidence even with every answer the same: verify on at least {needed} samples"]
    return [f"top-1 agreement {stats['agreement']:.2%} ({k}/{n}, {t.confidence:.0%} lower bound "
            f"{stats['agreement_lower']:.2%}) < {t.min_agreement:.2%}"]


def _accuracy_failures(stats: dict[str, Any], t: Thresholds) -> list[str]:
    if t.max_accuracy_drop is None or stats["accuracy_reference"] is None:
        return []
    drop = stats["accuracy_reference"] - stats["accuracy_bundle"]
    judged = stats["accuracy_drop_upper"] if t.confidence is not None else drop
    if judged <= t.max_accuracy_drop:
        return []
    bound = f", {t.confidence:.0%} upper bound {judged:.2%}" if t.confidence is not None else ""
    if _accuracy_not_shown(stats, t):
        return [f"accuracy drop not shown: {stats['labeled']} labeled samples cannot show a drop <= "
                f"{t.max_accuracy_drop:.2%} at {t.confidence:.0%} confidence (measured {drop:+.2%}, {stats['lost']} "
                f"lost, {stats['gained']} gained, upper bound {judged:.2%}); more labeled samples would "
                f"(at least {labels_to_show(t.max_accuracy_drop, t.confidence)} with none changed)"]
    return [f"accuracy drop {drop:.2%} ({stats['lost']} lost, {stats['gained']} gained of {stats['labeled']}"
            f"{bound}) > {t.max_accuracy_drop:.2%}"]
