"""edgesdk's static int8 calibration: smoothing, ranges, sensitivity, float fallbacks, one QDQ model.

1. Smooth: per-channel maxima of every MatMul/Gemm input over the calibration rows move
   activation outliers into the weights (``smooth.py``), an exact rewrite of the float model.
2. Observe and range: the smoothed inputs stream into fixed-size histograms; one method
   (minmax, percentile, entropy, mse) turns each into [lo, hi]. The same pass sums each
   MatMul/Gemm input's ``X^T X``, against which that layer's int8 weights are rounded (GPTQ,
   ``rounding.py``) once, for every trial and the final model, where the every-layer-int8 model
   keeps a lower logit KL on the judging samples with them than with nearest rounding.
3. Sensitivity: each layer is made int8 alone and the logit KL against the float model on a
   few of the judging samples ranks it (what it does to the answers, not to its own output).
   Each layer's own signal-to-noise ratio, from one pass where a copy of every layer reads the
   quantized version of its float input, is reported beside it.
4. Judge and fall back: the all-int8 model is judged against the float one on the judging
   samples (the verification data when given, else the calibration rows held aside) by a
   signal every sample contributes to: each sample's risk of changing its answer, from its
   float margin and the int8 logit noise. The most sensitive layers are kept in float, as few
   as the budget allows (doubling, then bisection), and the budget is a confidence bound
   wherever the judging samples are enough to show it: with one changed answer charged as a
   margin for another CPU, or, where they can show it only with none changed, without one.
   The same search then keeps out of int8 only the fewest most sensitive of those layers; the
   others stay int8 with a second int8 weight, the rounding residual of the first (``qdq_model``'s
   ``residual``: two integer MatMuls of the same int8 input, the weight good to about 16 bits).
   Of the layers still out, the same search keeps whole float only the fewest most sensitive;
   the others take int8 weight blocks (``qdq.int8_weight_blocks``: int8 weights with a scale per
   block of 32, judged as onnxruntime's ``MatMulNBits`` runs them, with activations quantized
   per block at run time). Of the layers still whole float, likewise, only the fewest most
   sensitive keep float32 weights: the others store them as float16 (``qdq.float16_weights``,
   computed in float32). On MiniLM SST-2 the three of six layers that took a residual weight
   ran the model at 0.54x fp32's time in onnxruntime against 0.57x with all six computing in
   float, at 27.8% of its bytes against 26.5%.

The result is a QDQ ONNX model and a portable ranges document (tensor -> scale, zero point,
method) that every target's int8 bundle is built from. The float model is loaded once; every
trial is an in-memory rewrite.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from edgesdk.errors import InputError
from edgesdk.stats import labels_to_show, paired_drop_upper, samples_to_show, softmax, wilson_interval
from edgesdk.verification import Selection

from .divergence import layer_divergence
from .observers import Histogram, unpadded
from .onnx_run import onnx_logits, run_outputs
from .qdq import (
    WEIGHT_BLOCK,
    QuantNode,
    activation_qparams,
    blockable,
    conv_outputs,
    float16_layers,
    float16_weights,
    int8_weight_blocks,
    qdq_model,
    quantizable_nodes,
    quantize_embeddings,
    residual_able,
)
from .ranges import RANGE_METHODS, activation_range
from .rounding import Gram, rounded_inputs, rounded_weights
from .sensitivity import local_snr
from .smooth import SMOOTH_ALPHA, ChannelMax, drop_idle_smoothing, smooth_model, smoothable, smoothing_scale

log = logging.getLogger(__name__)

__all__ = ["Budget", "Calibration", "Judge", "LayerChoice", "calibrate", "held_aside", "search_float_layers",
           "search_int8_weights", "judged_rounding", "judgement_caveat", "MIN_SAMPLES", "MAX_JUDGE_SAMPLES",
           "RANK_SAMPLES", "JUDGEMENTS", "RESIDUAL_WEIGHTS", "FLOAT16_WEIGHTS"]

MIN_SAMPLES = 20
MAX_JUDGE_SAMPLES = 2000
RANK_SAMPLES = 64
RANK_WORK = 4096  # MiniLM's 38 layers rank on 64 samples, a 200-conv CNN on 20
RESIDUAL_WEIGHTS = "int8 and a second int8 weight, its rounding residual; int8 input"
FLOAT16_WEIGHTS = "float16, computed in float32"  # a float layer's weights in the QDQ model (``float16_weights``)
# how a configuration is judged, strictest first: the first the judging samples can show is used
JUDGEMENTS = {"bound": {"bound": True, "margin": 1}, "bound without margin": {"bound": True, "margin": 0},
              "point": {"bound": False, "margin": 1}}
Progress = Callable[[str], None] | None


@dataclass(frozen=True)
class Budget:
    """What the int8 model must keep against the float one: agreement and accuracy drop, judged
    on ``confidence`` bounds when the judging samples can show them."""

    min_agreement: float = 0.99
    max_accuracy_drop: float = 0.005
    confidence: float = 0.95


@dataclass(frozen=True)
class Judge:
    """The encoded samples the int8 model is judged on while choosing float layers."""

    rows: list
    labels: np.ndarray
    source: str


@dataclass(frozen=True)
class LayerChoice:
    """The user's word on layers: ``float_layers`` stay float, ``int8_layers`` stay int8 (names of
    PyTorch modules or ONNX nodes, shell patterns allowed)."""

    float_layers: tuple[str, ...] = ()
    int8_layers: tuple[str, ...] = ()

    def resolve(self, nodes: Sequence[QuantNode]) -> tuple[set[str], set[str]]:
        """The ONNX node names each list selects; an entry that selects nothing is refused."""
        def select(patterns: tuple[str, ...], option: str) -> set[str]:
            chosen = set()
            for pattern in patterns:
                hits = {n.node for n in nodes if fnmatch.fnmatchcase(n.layer, pattern)
                        or fnmatch.fnmatchcase(n.node, pattern)}
                if not hits:
                    known = ", ".join(sorted({n.layer for n in nodes})[:8])
                    raise InputError(f"{option} {pattern!r} names no quantizable layer of this model; "
                                     f"layers look like: {known} (shell patterns such as '*.output.dense' work)")
                chosen |= hits
            return chosen

        forced_float = select(self.float_layers, "--float-layers")
        forced_int8 = select(self.int8_layers, "--int8-layers")
        both = forced_float & forced_int8
        if both:
            raise InputError(f"layers {sorted(both)[:4]} are in both --float-layers and --int8-layers: pick one")
        return forced_float, forced_int8


@dataclass
class _Search:
    """What judging an int8 configuration needs: the float model, the ranges, the judge's samples
    and PyTorch-free float reference logits, and the budget."""

    model: Any
    ranges: dict[str, tuple[float, float]]
    nodes: set[str]
    judge: Judge
    encoder: Any
    reference: np.ndarray
    budget: Budget
    progress: Progress = None
    original: Any = None
    weights: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # rounded int8 weights

    def trial(self, float_nodes: set[str], symmetric: bool = False, blocks: set[str] = frozenset(),
              residual: set[str] = frozenset(), halves: set[str] = frozenset()) -> dict[str, Any]:
        """The effect of ``float_nodes`` out of int8 (``blocks`` of them with int8 weight blocks,
        ``halves`` with float16 weights) and of ``residual`` int8 layers with a second int8 weight."""
        if blocks or residual or halves:
            candidate = _int8_model(self.model, self.original, self.ranges, self.nodes - float_nodes, blocks=blocks,
                                    weights=self.weights, residual=residual, halves=halves)
        else:
            candidate, _ = qdq_model(self.model, self.ranges, self.nodes - float_nodes, symmetric, self.weights)
        return effect(self.reference, onnx_logits(candidate, self.judge.rows, self.encoder), self.judge.labels)

    def kl_alone(self, nodes: Sequence[QuantNode]) -> dict[str, float]:
        """Per node: the logit KL against the float model with only that layer int8, on up to
        ``RANK_SAMPLES`` of the judging samples spread over them (fewer for many layers: one
        trial per layer, ``RANK_WORK`` layer-samples in all, at least 16 samples)."""
        count = min(RANK_SAMPLES, max(16, RANK_WORK // max(1, len(nodes))))
        picks = slice(None, None, max(1, -(-len(self.judge.rows) // count)))
        rows, reference = self.judge.rows[picks], self.reference[picks]
        kl = {}
        for done, node in enumerate(nodes):
            if self.progress is not None:
                self.progress(f"sensitivity: layer {done + 1}/{len(nodes)} int8 alone")
            candidate, _ = qdq_model(self.model, self.ranges, {node.node}, weights=self.weights)
            kl[node.node] = logit_kl(reference, onnx_logits(candidate, rows, self.encoder))
        return kl

    def float_layers(self, ranked: list[dict[str, Any]], base: set[str], symmetric: bool = False
                     ) -> tuple[set[str], dict[str, Any], list[dict[str, Any]], str]:
        """``base`` and the fewest of ``ranked`` (most sensitive first) kept float for the budget."""
        kept, chosen, steps, judged = search_float_layers(
            ranked, lambda extra: self.trial(base | extra, symmetric), self.budget, self.progress)
        return base | {s["node"] for s in ranked[:kept]}, chosen, steps, judged

    def residual_weights(self, float_nodes: set[str], ranked: list[dict[str, Any]], judged: str
                         ) -> tuple[set[str], dict[str, Any] | None, list[dict[str, Any]]]:
        """Of the searched ``float_nodes``, those that keep the budget as int8 layers with a second
        int8 weight (``qdq_model``'s ``residual``): all but the fewest most sensitive of ``ranked``,
        by the same search and ``judged`` judgement. Returns them, their effect (None when none)
        and the steps."""
        can = residual_able(self.model)
        candidates = [s for s in ranked if s["node"] in float_nodes and s["node"] in can]
        return search_int8_weights(candidates, lambda nodes: self.trial(float_nodes - nodes, residual=nodes),
                                   self.budget, self.progress, judged)

    def weight_blocks(self, float_nodes: set[str], ranked: list[dict[str, Any]], judged: str,
                      residual: set[str] = frozenset()) -> tuple[set[str], dict[str, Any] | None, list[dict[str, Any]]]:
        """Of the searched ``float_nodes``, those that take int8 weight blocks (``int8_weight_blocks``)
        with the budget kept (and the ``residual`` layers int8 with two weights): all but the
        fewest most sensitive of ``ranked``, by the same search and ``judged`` judgement. Returns
        them, their effect (None when none) and the steps."""
        can = blockable(self.model)
        candidates = [s for s in ranked if s["node"] in float_nodes and s["node"] in can]
        return search_int8_weights(
            candidates, lambda blocks: self.trial(float_nodes, blocks=blocks, residual=residual), self.budget,
            self.progress, judged)

    def float16_weights(self, float_nodes: set[str], ranked: list[dict[str, Any]], judged: str,
                        residual: set[str], blocks: set[str]) -> tuple[set[str], dict[str, Any] | None,
                                                                      list[dict[str, Any]]]:
        """Of the searched ``float_nodes`` left whole float (not ``blocks``), those that keep the
        budget with float16 weights (``float16_weights``), the ``residual`` and ``blocks`` layers as
        chosen: all but the fewest most sensitive of ``ranked``, by the same search and ``judged``
        judgement. Returns them, their effect (None when none) and the steps."""
        candidates = [s for s in ranked if s["node"] in float_nodes - blocks]
        return search_int8_weights(
            candidates, lambda halves: self.trial(float_nodes, blocks=blocks, residual=residual, halves=halves),
            self.budget, self.progress, judged)


@dataclass
class Calibration:
    """The int8 model, its ranges, the float layers with their measured effect, and figures."""

    model: Path
    ranges: dict[str, Any]
    float_layers: list[dict[str, Any]]
    sensitivity: list[dict[str, Any]]
    met_budget: bool
    figures: dict[str, Any] = field(default_factory=dict)
    float_model: Any = None
    original_model: Any = None
    quantized_nodes: list[str] = field(default_factory=list)
    search: _Search | None = field(default=None, repr=False)
    forced_int8: frozenset[str] = frozenset()
    blocks: frozenset[str] = frozenset()
    halves: frozenset[str] = frozenset()  # float layers with float16 weights
    residual: frozenset[str] = frozenset()  # int8 layers with a second int8 weight
    smoothing: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # layer: its input's divisor
    weights: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)  # rounded int8
    _symmetric: dict[str, Any] | None = field(default=None, repr=False)

    def symmetric(self) -> dict[str, Any]:
        """TensorRT's form of this calibration: int8 activations with zero point 0 over the same
        ranges. Symmetric ranges spend half their levels on activations that are never negative,
        so the budget is judged again and more layers kept float when it needs them."""
        if self._symmetric is None:
            base = {f["node"] for f in self.float_layers}
            ranked = [s for s in self.sensitivity if s["node"] not in base | self.forced_int8]
            nodes, chosen, steps, judged = self.search.float_layers(ranked, base, symmetric=True)
            self._symmetric = {"float_nodes": nodes, "summary": {
                "float_layers": [s["layer"] for s in self.sensitivity if s["node"] in nodes],
                "added_float_layers": [s["layer"] for s in self.sensitivity if s["node"] in nodes - base],
                "judged_effect": chosen, "judged_by": judged, "search": steps,
                "met_budget": meets(chosen, self.search.budget, **JUDGEMENTS[judged])}}
        return self._symmetric

    def write_model(self, out: Path, symmetric: bool = False) -> Path:
        """Write the int8 model again from the same ranges (``symmetric``: int8 activations with
        zero point 0, for TensorRT, with the float layers ``symmetric()`` chose; TensorRT's layers out
        of int8 stay float whole, as its weight-only int8 can't be checked here, and its int8 layers
        have one weight each)."""
        import onnx

        float_nodes = (self.symmetric()["float_nodes"] if symmetric else {f["node"] for f in self.float_layers})
        ranges = {name: (r["lo"], r["hi"]) for name, r in self.ranges["activations"].items()}
        int8_nodes = set(self.quantized_nodes) - float_nodes
        blocks, residual, halves = ((set(), set(), set()) if symmetric
                                    else (set(self.blocks), set(self.residual), set(self.halves)))
        onnx.save_model(_int8_model(self.float_model, self.original_model, ranges, int8_nodes, symmetric, blocks,
                                    self.weights, residual, halves), str(out))
        return out

    def summary(self, weights: dict[str, str] | None = None) -> dict[str, Any]:
        """What the manifest and report say about this calibration. ``weights``: for a target that
        stores the float layers' weights otherwise than calibration (int8 weight blocks, float16), how it
        stores them, by layer (a layer not in it: float), and whose int8 layers have one weight
        each; None: as calibrated."""
        if weights is None:
            return {"met_budget": self.met_budget, "float_layers": self.float_layers, "sensitivity": self.sensitivity,
                    **self.figures}
        float_layers = [{**f, "weights": weights.get(f["layer"], "float")} for f in self.float_layers]
        residual = {**self.figures["residual_weights"], "layers": [],
                    "note": "not in this bundle: its int8 layers have one int8 weight each"}
        return {"met_budget": self.met_budget, "float_layers": float_layers, "sensitivity": self.sensitivity,
                **self.figures, "residual_weights": residual}


def _int8_model(smoothed: Any, original: Any, ranges: dict[str, tuple[float, float]], int8_nodes: set[str],
                symmetric: bool = False, blocks: set[str] = frozenset(),
                weights: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                residual: set[str] = frozenset(), halves: set[str] = frozenset()) -> Any:
    """The QDQ model a bundle ships: ``int8_nodes`` quantized in the smoothed float model (with
    ``weights`` rounded already; the ``residual`` ones of them with a second int8 weight), the smoothing
    that only the other layers read taken out again, ``blocks`` of the other layers given int8
    weight blocks (``int8_weight_blocks``) and ``halves`` float16 weights (``float16_weights``)."""
    model, _ = qdq_model(smoothed, ranges, int8_nodes, symmetric, weights, residual)
    drop_idle_smoothing(model, original)
    int8_weight_blocks(model, blocks)
    float16_weights(model, halves)
    return model


def _with_int8_embeddings(model: Any) -> tuple[Any, list[str]]:
    """A copy of ``model`` with its embedding tables int8 already, as every QDQ model has them,
    and their names: trials built from it don't quantize a table again (e5-small's 96M-entry one
    took 8 s a trial)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out, quantize_embeddings(out)


def held_aside(count: int) -> np.ndarray:
    """Which of ``count`` calibration samples are held aside (every fifth) to judge the int8
    model when no verification data is given; the others set the ranges."""
    return np.arange(count) % 5 == 4


def logit_kl(reference: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL divergence of the softmax of ``logits`` from that of the float ``reference``."""
    p, q = softmax(reference), softmax(logits)
    return float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))


def effect(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """How an int8 model's logits part from the float ones: counts, logit error, KL, and the
    expected number of changed answers (each sample's risk from its float margin and the noise)."""
    n = len(reference)
    order = np.argsort(-reference, axis=1)
    top, second = order[:, 0], order[:, 1]
    rows = np.arange(n)
    margin = reference[rows, top] - reference[rows, second]
    error = logits - reference
    gap_noise = error[rows, top] - error[rows, second]
    sigma = float(np.sqrt(np.mean(gap_noise ** 2)))
    risk = np.array([NormalDist().cdf(-m / sigma) for m in margin]) if sigma > 0 else np.zeros(n)
    known = labels >= 0
    ref_ok, int8_ok = top[known] == labels[known], logits.argmax(1)[known] == labels[known]
    diff = np.abs(error)
    return {"samples": n, "agreeing": int((logits.argmax(1) == top).sum()),
            "agreement": float((logits.argmax(1) == top).mean()), "expected_changes": float(risk.sum()),
            "kl": logit_kl(reference, logits),
            "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()),
            "labeled": int(known.sum()), "lost": int((ref_ok & ~int8_ok).sum()),
            "gained": int((~ref_ok & int8_ok).sum()),
            "accuracy_drop": float(ref_ok.mean() - int8_ok.mean()) if known.any() else None}


def changes_with_margin(e: dict[str, Any], margin: int = 1) -> float:
    """The changed answers a configuration is charged with: the larger of those seen and those
    expected from the logit noise, plus ``margin``, so that another CPU's int8 kernels or another
    runtime (which move a near-tie now and then) still keep the gate."""
    return max(e["samples"] - e["agreeing"], e["expected_changes"]) + margin


def meets(e: dict[str, Any], budget: Budget, bound: bool = True, margin: int = 1) -> bool:
    """Whether an effect keeps the budget: changed answers counted with a ``margin``
    (``changes_with_margin``), judged on the lower confidence bound (``bound``) or the point
    estimate; the accuracy drop on its upper bound where the labeled samples can show the budget."""
    n = e["samples"]
    changed = min(changes_with_margin(e, margin), n)
    agreement = wilson_interval(n - changed, n, budget.confidence)[0] if bound else 1 - changed / n
    if agreement < budget.min_agreement:
        return False
    if not e["labeled"]:
        return True
    if bound and e["labeled"] >= labels_to_show(budget.max_accuracy_drop, budget.confidence) and e["accuracy_drop"] > 0:
        return paired_drop_upper(e["lost"], e["gained"], e["labeled"], budget.confidence) <= budget.max_accuracy_drop
    return e["accuracy_drop"] <= budget.max_accuracy_drop


def judgement_caveat(figures: dict[str, Any]) -> str | None:
    """When the judging samples were too few to show the budget on its bound with a margin (so float
    layers were chosen without one, or on point estimates), why, and how many samples would; None
    otherwise."""
    judged = figures.get("judged_by")
    if judged not in ("point", "bound without margin"):
        return None
    budget = figures["budget"]
    needed = samples_to_show(budget["min_agreement"], budget["confidence"], 1)
    samples = f"the {figures['judge_samples']} samples it was judged on ({figures['judged_on']})"
    goal = f"top-1 agreement >= {budget['min_agreement']:.2%} on its {budget['confidence']:.0%} bound"
    if judged == "point":
        return (f"{samples} cannot show {goal} once one change is charged as a margin, so float layers were chosen "
                f"on point estimates and the bundles' gates may fail; {needed} or more samples (--verify-on) would "
                "show it")
    return (f"{samples} show {goal} only with no answer changed, so float layers were chosen for none to change, "
            f"with no margin for another CPU's int8 kernels; {needed} or more samples (--verify-on) would leave one")


def search_float_layers(ranked: list[dict[str, Any]], trial: Callable[[set[str]], dict[str, Any]],
                        budget: Budget, progress: Progress, judged: str | None = None
                        ) -> tuple[int, dict[str, Any], list[dict[str, Any]], str]:
    """The fewest most-sensitive layers to keep in float for the budget (doubling, then bisection).

    The budget is judged by the first of ``JUDGEMENTS`` that the judging samples can show with
    no layer or every ranked layer in float: on its confidence bound with one change of margin,
    on the bound with none (when the samples show it only with no answer changed: the bundles'
    gates need exactly that), else on point estimates. Returns that number, its effect, every
    configuration tried, and the judgement's name. When nothing meets the budget, the
    configuration with the fewest expected changes is returned. ``judged`` names the judgement
    to use instead (a second search within the first's float layers keeps the first's).
    """
    tried: dict[int, dict[str, Any]] = {}

    def effect_of(k: int) -> dict[str, Any]:
        if k not in tried:
            if progress is not None:
                progress(f"int8 with the {k} most sensitive layers in float")
            tried[k] = trial({s["node"] for s in ranked[:k]})
        return tried[k]

    judged = judged or next((name for name, rule in JUDGEMENTS.items()
                             if meets(effect_of(0), budget, **rule) or meets(effect_of(len(ranked)), budget, **rule)),
                            "point")

    def keeps(e: dict[str, Any]) -> bool:
        return meets(e, budget, **JUDGEMENTS[judged])

    low, high = -1, 0  # invariant: k=low misses the budget, k=high is the candidate
    while not keeps(effect_of(high)) and high < len(ranked):
        low, high = high, min(len(ranked), max(1, 2 * high))
    if keeps(effect_of(high)):
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (low, mid) if keeps(effect_of(mid)) else (mid, high)
        kept = high
    else:
        kept = min(tried, key=lambda k: (changes_with_margin(tried[k]), tried[k]["kl"], k))
    steps = [{"float_layers": k, **tried[k]} for k in sorted(tried)]
    return kept, tried[kept], steps, judged


def search_int8_weights(candidates: list[dict[str, Any]], trial: Callable[[set[str]], dict[str, Any]],
                        budget: Budget, progress: Progress, judged: str
                        ) -> tuple[set[str], dict[str, Any] | None, list[dict[str, Any]]]:
    """Of ``candidates`` (float layers, most sensitive first), those that keep the budget with
    int8 weights in some form: all but the fewest most sensitive, by ``search_float_layers`` and its
    ``judged`` judgement. ``trial`` judges a set of candidates' nodes given that form. Returns
    those nodes, their effect (None when none) and every configuration tried."""
    if not candidates:
        return set(), None, []
    nodes = {s["node"] for s in candidates}
    whole, chosen, steps, _ = search_float_layers(candidates, lambda kept: trial(nodes - kept), budget, progress,
                                                  judged=judged)
    picked = {s["node"] for s in candidates[whole:]}
    return picked, chosen if picked else None, steps


def judged_rounding(search: _Search) -> dict[str, Any]:
    """Keep ``search``'s GPTQ-rounded weights only where the judging samples show that they serve
    them: the every-layer-int8 model is judged with them and with nearest rounding, and the lower
    logit KL wins (GPTQ fits the inputs of the calibration rows; calibration text unlike the judged
    traffic can leave it worse there: the demo's off-topic chat, 2.14e-3 against 1.87e-3).
    Leaves ``search.weights`` as chosen; returns the choice and both KLs for the manifest."""
    if not search.weights:
        return {"method": "nearest", "layers": 0, "judged_kl": None}
    rounded, search.weights = search.weights, {}
    kl = {"nearest": search.trial(set())["kl"]}
    search.weights = rounded
    kl["gptq"] = search.trial(set())["kl"]
    if kl["gptq"] > kl["nearest"]:
        search.weights = {}
    return {"method": "gptq" if search.weights else "nearest", "layers": len(search.weights), "judged_kl": kl}


def _observe(model: Any, rows: list, encoder, names: list[str], channels: set[str], progress: Progress,
             products: set[str] = frozenset()
             ) -> tuple[dict[str, Histogram], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Histograms of ``names``, per-channel maxima of ``channels`` and ``X^T X`` of ``products``
    over ``rows``; padded token positions are left out. Memory is independent of the number of rows."""
    histograms = {n: Histogram() for n in names}
    maxima = {n: ChannelMax() for n in channels}
    grams = {n: Gram() for n in products}
    wanted = sorted(set(names) | channels | products)
    done = 0
    for feeds, outputs in run_outputs(model, wanted, rows, encoder, batch_size=8):
        mask = feeds.get("attention_mask")
        for name, value in outputs.items():
            value = unpadded(value, mask)
            if name in histograms:
                histograms[name].update(value)
            if name in maxima:
                maxima[name].update(value)
            if name in grams:
                grams[name].update(value)
        done += len(next(iter(feeds.values())))
        if progress is not None:
            progress(f"observed {done}/{len(rows)} samples")
    return (histograms, {n: m.value for n, m in maxima.items() if m.value is not None},
            {n: g.value for n, g in grams.items() if g.value is not None})


def _smoothed(model: Any, nodes: list[QuantNode], rows: list, encoder, alpha: float,
              progress: Progress) -> tuple[Any, list[QuantNode], dict[str, np.ndarray], int]:
    """The float model with activation outliers migrated into weights, its quantizable nodes, the
    smoothing scale of each layer whose input was smoothed (by layer name), and how many
    activations were smoothed."""
    if alpha <= 0:
        return model, nodes, {}, 0
    groups = smoothable(model, nodes)
    if not groups:
        return model, nodes, {}, 0
    _, maxima, _ = _observe(model, rows, encoder, [], set(groups), progress)
    smoothed, renamed = smooth_model(model, groups, maxima, alpha)
    scales = {q.layer: smoothing_scale(maxima[activation], alpha) for activation in renamed
              for q in groups[activation]}
    return smoothed, quantizable_nodes(smoothed), scales, len(renamed)


def _judge(judge: Judge | None, rows: list, labels: np.ndarray) -> tuple[list, list, Judge]:
    """Split calibration rows into range rows and judging rows (held aside when no judge is given)."""
    if judge is not None:
        if len(judge.rows) > MAX_JUDGE_SAMPLES:  # evenly spaced, as the pipeline picks them from a verification file
            keep = Selection(len(judge.rows), MAX_JUDGE_SAMPLES).mask(0, len(judge.rows))
            judge = Judge([r for r, k in zip(judge.rows, keep) if k], judge.labels[keep], judge.source)
        return rows, [r for r, h in zip(rows, held_aside(len(rows))) if h], judge
    held = held_aside(len(rows))
    kept = [r for r, h in zip(rows, held) if not h]
    held_rows = [r for r, h in zip(rows, held) if h]
    return kept, held_rows, Judge(held_rows, labels[held], "calibration samples held aside (every fifth)")


def calibrate(fp32: Path, rows: list, labels: np.ndarray, encoder, workdir: Path, method: str = "mse",
              budget: Budget = Budget(), progress: Progress = None, judge: Judge | None = None,
              choice: LayerChoice = LayerChoice(), smooth_alpha: float = SMOOTH_ALPHA) -> Calibration:
    """Calibrate the float ONNX model ``fp32`` on encoded ``rows`` and write its int8 model.

    ``judge`` (the verification samples) decides the float fallbacks; without it every fifth
    calibration row is held aside for that. ``choice`` forces layers float or int8.
    """
    import onnx

    RANGE_METHODS.get(method)
    if len(rows) < MIN_SAMPLES:
        raise InputError(f"int8 calibration needs at least {MIN_SAMPLES} samples, got {len(rows)}: "
                         "give a larger calibration file (a few hundred samples is typical)")
    start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    range_rows, probe_rows, judge = _judge(judge, rows, labels)
    original = onnx.load(str(fp32))
    forced_float, forced_int8 = choice.resolve(quantizable_nodes(original))
    model, nodes, smoothing, smoothed = _smoothed(original, quantizable_nodes(original), range_rows, encoder,
                                                  smooth_alpha, progress)
    # the layers' inputs, and the outputs of their Convs, quantized too so that they run in int8
    activations = sorted({n.activation for n in nodes} | set(conv_outputs(model, [n.node for n in nodes]).values()))
    inputs = rounded_inputs(model, nodes)
    histograms, _, grams = _observe(model, range_rows, encoder, activations, set(), progress, set(inputs.values()))
    ranges = {name: activation_range(histograms[name], method) for name in activations}
    observed = time.perf_counter()
    if progress is not None:
        progress("int8 weights rounded against their inputs (GPTQ)")
    weights = rounded_weights(model, inputs, grams)
    del grams
    all_nodes = {n.node for n in nodes}
    trial_base, tables = _with_int8_embeddings(model)
    search = _Search(trial_base, ranges, all_nodes, judge, encoder, onnx_logits(model, judge.rows, encoder), budget,
                     progress, original, weights)
    rounding = judged_rounding(search)
    weights = search.weights
    rounded = time.perf_counter()
    int8, _ = qdq_model(trial_base, ranges, all_nodes, weights=weights)
    if progress is not None:
        progress("each layer's own SNR (one pass)")
    snr = local_snr(model, int8, nodes, (probe_rows or judge.rows)[:32], encoder)
    forced = forced_float | forced_int8  # not ranked
    kl = search.kl_alone([n for n in nodes if n.node not in forced])
    sensitivity = sorted(({"layer": n.layer, "node": n.node, "op": n.op, "kl_alone": kl.get(n.node),
                           "local_snr_db": snr[n.node]} for n in nodes),
                         key=lambda s: (-(s["kl_alone"] or 0.0), s["local_snr_db"], s["node"]))
    ranked = [s for s in sensitivity if s["node"] not in forced]
    float_nodes, chosen, steps, judged = search.float_layers(ranked, set(forced_float))
    residual, residual_effect, residual_steps = set(), None, []
    blocks, blocks_effect, block_steps = set(), None, []
    halves, halves_effect, half_steps = set(), None, []
    if meets(chosen, budget, **JUDGEMENTS[judged]):
        # the user's float layers are not in ``ranked``, so these searches leave them float
        residual, residual_effect, residual_steps = search.residual_weights(float_nodes, ranked, judged)
        float_nodes -= residual
        blocks, blocks_effect, block_steps = search.weight_blocks(float_nodes, ranked, judged, residual)
        halves, halves_effect, half_steps = search.float16_weights(float_nodes, ranked, judged, residual, blocks)
    chosen = halves_effect or blocks_effect or residual_effect or chosen
    final = _int8_model(model, original, ranges, all_nodes - float_nodes, blocks=blocks, weights=weights,
                        residual=residual, halves=halves)
    log.debug("calibration: ranges in %.1f s, %d of %d layers kept float", observed - start, len(float_nodes),
              len(all_nodes))
    out = workdir / "model.int8.onnx"
    onnx.save_model(final, str(out))
    if progress is not None:
        progress("layer-by-layer divergence of the int8 model")
    divergence = layer_divergence(model, final, judge.rows[:16], encoder, {n.node for n in nodes} - float_nodes)
    quantized = [n for n in nodes if n.node not in float_nodes]
    stored_halves = float16_layers(final)  # less any weight float16 can't hold
    float_layers = [{**s, "forced": s["node"] in forced_float,
                     "weights": f"int8, blocks of {WEIGHT_BLOCK}" if s["node"] in blocks
                     else FLOAT16_WEIGHTS if s["node"] in stored_halves else "float"}
                    for s in sensitivity if s["node"] in float_nodes]
    residual_layers = [{**s, "forced": False, "weights": RESIDUAL_WEIGHTS}
                       for s in sensitivity if s["node"] in residual]
    return Calibration(
        model=out,
        float_model=model,
        original_model=original,
        quantized_nodes=[n.node for n in nodes],
        search=search,
        forced_int8=frozenset(forced_int8),
        blocks=frozenset(blocks),
        halves=frozenset(halves),
        residual=frozenset(residual),
        smoothing=smoothing,
        weights=weights,
        ranges=_ranges_document(method, ranges, activation_qparams(final), quantized, tables, rounding["method"]),
        float_layers=float_layers,
        sensitivity=sensitivity,
        met_budget=meets(chosen, budget, **JUDGEMENTS[judged]),
        figures={
            "method": method, "samples": len(range_rows), "judged_on": judge.source,
            "judge_samples": len(judge.rows),
            "smoothing": {"alpha": smooth_alpha, "activations": smoothed},
            "weight_rounding": rounding,
            "quantized_layers": len(quantized), "quantizable_layers": len(nodes),
            "forced_float": sorted(forced_float), "forced_int8": sorted(forced_int8),
            "judged_effect": chosen, "judged_by": judged, "search": steps,
            # each search's steps count the layers it keeps out of its form: of the float search's
            # layers, the residual search gives the others a second int8 weight, then the block
            # search gives the others of those left int8 weight blocks, and the float16 search
            # the others of those left whole float float16 weights
            "residual_weights": {"layers": residual_layers, "search": residual_steps},
            "weight_blocks": {"layers": len(blocks), "block": WEIGHT_BLOCK, "search": block_steps},
            "float16_weights": {"layers": len(halves), "search": half_steps},
            "budget": {"min_agreement": budget.min_agreement, "max_accuracy_drop": budget.max_accuracy_drop,
                       "confidence": budget.confidence,
                       "samples_to_show": samples_to_show(budget.min_agreement, budget.confidence)},
            "divergence": divergence,
            "timing": {"observe_s": observed - start, "rounding_s": rounded - observed,
                       "seconds": time.perf_counter() - start},
        },
    )


def _ranges_document(method: str, ranges: dict[str, tuple[float, float]], qparams: dict[str, dict],
                     quantized: list[QuantNode], tables: list[str], rounding: str) -> dict[str, Any]:
    return {
        "format": "edgesdk-int8-ranges",
        "method": method,
        "activations": {name: {"lo": float(lo), "hi": float(hi), **qparams.get(name, {}),
                               "quantized": name in qparams} for name, (lo, hi) in sorted(ranges.items())},
        "weights": {"dtype": "int8",
                    "scheme": "symmetric per output channel, adjacent input pairs within int16; " + (
                        "MatMul and Gemm weights rounded against their calibration inputs (GPTQ)"
                        if rounding == "gptq" else "rounded to nearest"),
                    "layers": sorted(n.layer for n in quantized)},
        "embeddings": {"dtype": "int8", "scheme": "symmetric per row", "tables": tables},
    }
