"""Parity results are values: error statistics, agreement, accuracy, and a pass/fail verdict.

Numpy only, so the torch-free runtime can run a bundle's self-check with the same maths.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np

from .errors import InputError
from .stats import labels_to_show, paired_drop_upper, samples_to_show, softmax, wilson_interval

__all__ = ["Thresholds", "ParityResult", "ParityAccumulator", "LogHistogram", "compare", "gates", "skipped", "as_proxy",
           "default_thresholds"]


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


# how far a bundle's probabilities may sit from the softmax of its own logits (int8 outputs: 1/256)
PROBABILITY_TOLERANCE = 1 / 64

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
    inconsistent_outputs: int = 0

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


def as_proxy(result: ParityResult, unavailable: str, proxy: str) -> ParityResult:
    """``result``, measured in a proxy runtime, as the real runtime's: "skipped" (the real runtime
    did not run: ``unavailable`` says why) with every figure of the proxy, or "fail" when even
    the proxy misses the thresholds; ``proxy`` says what ran, in words."""
    return replace(result, status="fail" if result.status == "fail" else "skipped",
                   reason=f"{unavailable}; proxy: {result.reason}", notes=[*result.notes, f"figures: {proxy}"])


class LogHistogram:
    """Counts of non-negative values in log-spaced bins (``per_decade`` bins a decade from 1e-12;
    zero and anything below in the first): quantiles to within one bin, in bounded memory."""

    def __init__(self, per_decade: int = 64, low: float = 1e-12, decades: int = 24) -> None:
        self.per_decade, self.low = per_decade, low
        self.counts = np.zeros(per_decade * decades + 1, np.int64)

    def add(self, values: np.ndarray) -> None:
        with np.errstate(divide="ignore"):
            where = np.floor(np.log10(np.maximum(values, self.low) / self.low) * self.per_decade).astype(np.int64) + 1
        where[values < self.low] = 0
        self.counts += np.bincount(np.minimum(where, len(self.counts) - 1), minlength=len(self.counts))

    def edge(self, index: int) -> float:
        """The upper edge of bin ``index`` (0 for the first)."""
        return 0.0 if index == 0 else self.low * 10 ** (index / self.per_decade)

    def quantile(self, q: float) -> float:
        """An upper bound of the ``q`` quantile, at most one bin (3.7% with 64 a decade) above it."""
        index = int(np.searchsorted(np.cumsum(self.counts), q * self.counts.sum(), side="left"))
        return self.edge(index)


class ParityAccumulator:
    """Parity figures accumulated chunk by chunk (counts, maxima, a histogram), so a verification
    set of any size is judged in bounded memory; ``result()`` gives the same figures as
    ``compare`` on the whole set (p99 to within one histogram bin)."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self.samples = self.elements = self.agreeing = self.labeled = self.ref_ok = self.cand_ok = 0
        self.lost = self.gained = 0
        self.sum_abs_diff = self.max_abs_diff = self.worst_ratio = 0.0
        self.per_sample = LogHistogram()
        self.inconsistent = 0

    def add(self, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Add logits (samples x classes) of one chunk; ``labels`` (-1 = unknown) adds accuracies."""
        reference = np.asarray(reference, dtype=np.float64)
        candidate = np.asarray(candidate, dtype=np.float64)
        if reference.shape != candidate.shape or reference.ndim != 2 or len(reference) == 0:
            raise InputError(
                f"cannot compare logits of shapes {reference.shape} and {candidate.shape}: "
                "both must be (samples, classes) with at least one sample"
            )
        t = self.thresholds
        diff = np.abs(reference - candidate)
        ref_top, cand_top = reference.argmax(1), candidate.argmax(1)
        self.samples += len(reference)
        self.elements += diff.size
        self.sum_abs_diff += float(diff.sum())
        self.max_abs_diff = max(self.max_abs_diff, float(diff.max()))
        self.per_sample.add(diff.max(1))
        self.agreeing += int((ref_top == cand_top).sum())
        if t.max_abs_diff is not None:
            allowed = t.max_abs_diff + t.rtol * np.abs(reference)
            ratio = np.where(allowed > 0, diff / np.maximum(allowed, 1e-300), np.where(diff > 0, np.inf, 0))
            self.worst_ratio = max(self.worst_ratio, float(ratio.max()))
        if labels is not None:
            labels = np.asarray(labels)
            known = labels >= 0
            ref_ok, cand_ok = ref_top[known] == labels[known], cand_top[known] == labels[known]
            self.labeled += int(known.sum())
            self.ref_ok += int(ref_ok.sum())
            self.cand_ok += int(cand_ok.sum())
            self.lost += int((ref_ok & ~cand_ok).sum())
            self.gained += int((~ref_ok & cand_ok).sum())

    def add_run(self, reference: np.ndarray, outputs: dict[str, np.ndarray], labels: np.ndarray | None = None) -> None:
        """Add one chunk of a bundle's outputs: its logits against ``reference`` (as ``add``), and
        its ``probabilities`` and ``top_k`` against its own logits: the softmax of them, and led by
        the most probable class (a runtime can garble an output that the logits alone do not show)."""
        logits = np.asarray(outputs["logits"], np.float64)
        self.add(reference, logits, labels)
        bad = np.zeros(len(logits), bool)
        if "probabilities" in outputs:
            probabilities = np.asarray(outputs["probabilities"], np.float64)
            bad |= np.abs(probabilities - softmax(logits)).max(1) > PROBABILITY_TOLERANCE
            if "top_k" in outputs:
                first = probabilities[np.arange(len(logits)), np.asarray(outputs["top_k"])[:, 0]]
                bad |= first < probabilities.max(1) - PROBABILITY_TOLERANCE
        self.inconsistent += int(bad.sum())

    def result(self) -> ParityResult:
        """The verdict and figures of everything added."""
        if not self.samples:
            raise InputError("no samples were compared: give at least one verification sample")
        t = self.thresholds
        stats: dict[str, Any] = dict(
            samples=self.samples,
            max_abs_diff=self.max_abs_diff,
            mean_abs_diff=self.sum_abs_diff / self.elements,
            p99_abs_diff=min(self.per_sample.quantile(0.99), self.max_abs_diff),
            **_agreement_stats(self.agreeing, self.samples, t),
            **self._accuracy_stats(),
        )
        failures = []
        if t.max_abs_diff is not None:
            stats["worst_tolerance_ratio"] = self.worst_ratio
            if self.worst_ratio > 1:
                failures.append(f"max abs logit diff {stats['max_abs_diff']:.3g} exceeds atol {t.max_abs_diff:.3g}"
                                + (f" + rtol {t.rtol:.3g}·|logit|" if t.rtol else ""))
        failures += _agreement_failures(stats, t)
        if self.inconsistent:
            stats["inconsistent_outputs"] = self.inconsistent
            failures.append(f"{self.inconsistent} of {self.samples} samples got probabilities or top-k that disagree "
                            "with the bundle's own logits: its runtime garbles an output the logits do not show")
        notes: list[str] = []
        (notes if _accuracy_not_shown(stats, t) else failures).extend(_accuracy_failures(stats, t))
        status = "fail" if failures else "pass"
        reason = "; ".join(failures) if failures else "within thresholds"
        return ParityResult(status=status, reason=reason, thresholds=t, failures=failures, notes=notes, **stats)

    def _accuracy_stats(self) -> dict[str, Any]:
        if not self.labeled:
            return {"accuracy_reference": None, "accuracy_bundle": None}
        return {"accuracy_reference": self.ref_ok / self.labeled, "accuracy_bundle": self.cand_ok / self.labeled,
                "labeled": self.labeled, "lost": self.lost, "gained": self.gained,
                "accuracy_drop_upper": paired_drop_upper(self.lost, self.gained, self.labeled,
                                                         self.thresholds.confidence or 0.95)}


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    thresholds: Thresholds,
    labels: np.ndarray | None = None,
) -> ParityResult:
    """Compare logits (samples x classes); ``labels`` (-1 = unknown) adds accuracies."""
    accumulator = ParityAccumulator(thresholds)
    accumulator.add(reference, candidate, labels)
    return accumulator.result()


def _accuracy_not_shown(stats: dict[str, Any], t: Thresholds) -> bool:
    """True when the accuracy-drop gate is judged on its bound but the labeled samples cannot show it:
    too few of them even with nothing lost, or no drop measured while the bound stays above the
    budget. It is then reported as not shown instead of failing (agreement still bounds it)."""
    if t.confidence is None or t.max_accuracy_drop is None or stats["accuracy_reference"] is None:
        return False
    drop = stats["accuracy_reference"] - stats["accuracy_bundle"]
    return stats["labeled"] < labels_to_show(t.max_accuracy_drop, t.confidence) or drop <= 0


def _agreement_stats(k: int, n: int, t: Thresholds) -> dict[str, Any]:
    lower, upper = wilson_interval(k, n, t.confidence or 0.95)
    needed = samples_to_show(t.min_agreement, t.confidence, 0) if t.confidence else None
    return {"agreement": k / n, "agreeing": k, "agreement_lower": lower, "agreement_upper": upper,
            "samples_needed": needed}


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
