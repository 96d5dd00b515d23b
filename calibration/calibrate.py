"""edgesdk's static int8 calibration: ranges, sensitivity, float fallbacks, one QDQ model.

1. Observe: run the calibration rows through the float ONNX model in onnxruntime, with
   every quantizable activation added as an output, into fixed-size histograms.
2. Range: one method (minmax, percentile, entropy, mse) turns each histogram into [lo, hi].
3. Sensitivity: on rows held aside from calibration, quantize each layer alone and measure
   top-1 agreement and logit error against the float model.
4. Fallback: quantize everything, then keep the most sensitive layers in float, one at a
   time, until the held-aside rows meet the budget (agreement and accuracy drop).

The result is a QDQ ONNX model and a portable ranges document (tensor -> scale, zero point,
method) that every target's int8 bundle is built from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesdk.errors import InputError

from .divergence import layer_divergence
from .observers import Histogram
from .qdq import activation_qparams, quantizable_nodes, quantize_all, with_float_nodes
from .ranges import RANGE_METHODS, activation_range

__all__ = ["Budget", "Calibration", "calibrate", "held_aside", "search_float_layers", "MIN_SAMPLES"]

MIN_SAMPLES = 20


@dataclass(frozen=True)
class Budget:
    """What the int8 model must keep on held-aside calibration rows."""

    min_agreement: float = 0.99
    max_accuracy_drop: float = 0.005


@dataclass
class Calibration:
    """The int8 model, its ranges, the float layers with their measured effect, and figures."""

    model: Path
    ranges: dict[str, Any]
    float_layers: list[dict[str, Any]]
    sensitivity: list[dict[str, Any]]
    met_budget: bool
    figures: dict[str, Any] = field(default_factory=dict)
    fp32: Path | None = None

    def write_model(self, out: Path, symmetric: bool = False) -> Path:
        """Write the int8 model again from the same ranges and float layers (``symmetric``:
        int8 activations with zero point 0, for TensorRT)."""
        import onnx

        ranges = {name: (r["lo"], r["hi"]) for name, r in self.ranges["activations"].items()}
        fp32_model = onnx.load(str(self.fp32))
        quantized = [n.node for n in quantizable_nodes(fp32_model)]
        int8, _ = quantize_all(self.fp32, ranges, quantized, symmetric)
        onnx.save_model(with_float_nodes(int8, fp32_model, {f["node"] for f in self.float_layers}), str(out))
        return out

    def summary(self) -> dict[str, Any]:
        """What the manifest and report say about this calibration."""
        return {"met_budget": self.met_budget, "float_layers": self.float_layers,
                "sensitivity": self.sensitivity, **self.figures}


def ort_session(model: Path | bytes, threads: int = 2):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def with_outputs(fp32: Path, names: list[str], out: Path) -> Path:
    import onnx

    model = onnx.load(str(fp32))
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in present)
    onnx.save_model(model, str(out))
    return out


def observe(fp32: Path, rows: list, encoder, names: list[str], workdir: Path, bins: int = 2048,
            batch_size: int = 8, progress: Callable[[str], None] | None = None) -> dict[str, Histogram]:
    """Histograms of the named float tensors over ``rows`` (memory independent of their number)."""
    session = ort_session(with_outputs(fp32, names, workdir / "observe.onnx"))
    histograms = {n: Histogram(bins) for n in names}
    done = 0
    for idx, feeds in encoder.batches(rows, batch_size):
        outputs = session.run(names, feeds)
        mask = feeds.get("attention_mask")
        for name, value in zip(names, outputs):
            if mask is not None and value.shape[:2] == mask.shape:  # padded positions are not real inputs
                value = value[mask.astype(bool)]
            histograms[name].update(value)
        done += len(idx)
        if progress is not None:
            progress(f"observed {done}/{len(rows)} samples")
    return histograms


def onnx_logits(model: Path | bytes, rows: list, encoder) -> np.ndarray:
    session = ort_session(model)
    parts = [session.run(["logits"], feeds)[0] for _, feeds in encoder.batches(rows, 16)]
    return np.concatenate(parts).astype(np.float64)


def _effect(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    known = labels >= 0
    drop = None
    if known.any():
        drop = float((reference.argmax(1)[known] == labels[known]).mean()
                     - (logits.argmax(1)[known] == labels[known]).mean())
    diff = np.abs(reference - logits)
    return {"agreement": float((reference.argmax(1) == logits.argmax(1)).mean()),
            "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()), "accuracy_drop": drop}


def _meets(effect: dict[str, float], budget: Budget) -> bool:
    drop = effect["accuracy_drop"]
    return effect["agreement"] >= budget.min_agreement and (drop is None or drop <= budget.max_accuracy_drop)


def held_aside(count: int) -> np.ndarray:
    """Which of ``count`` calibration samples are held aside (every fifth) for sensitivity and
    the budget; the others set the ranges."""
    return np.arange(count) % 5 == 4


def search_float_layers(ranked: list[dict[str, Any]], trial: Callable[[set[str]], dict[str, float]], budget: Budget,
            progress: Callable[[str], None] | None) -> tuple[int, dict[str, float], list[dict[str, Any]]]:
    """The fewest most-sensitive layers to keep in float for the budget (doubling, then bisection).

    Returns that number, the held-aside effect, and every configuration tried. When even
    all-float-but-embeddings misses the budget, the best configuration tried is returned.
    """
    tried: dict[int, dict[str, float]] = {}

    def effect(k: int) -> dict[str, float]:
        if k not in tried:
            if progress is not None:
                progress(f"int8 with the {k} most sensitive layers in float")
            tried[k] = trial({s["node"] for s in ranked[:k]})
        return tried[k]

    low, high = -1, 0  # invariant: k=low misses the budget, k=high is the candidate
    while not _meets(effect(high), budget) and high < len(ranked):
        low, high = high, min(len(ranked), max(1, 2 * high))
    if _meets(effect(high), budget):
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (low, mid) if _meets(effect(mid), budget) else (mid, high)
        kept = high
    else:
        kept = max(tried, key=lambda k: (tried[k]["agreement"], -tried[k]["mean_abs_diff"]))
    steps = [{"float_layers": k, **tried[k]} for k in sorted(tried)]
    return kept, tried[kept], steps


def calibrate(fp32: Path, rows: list, labels: np.ndarray, encoder, workdir: Path, method: str = "mse",
              budget: Budget = Budget(), progress: Callable[[str], None] | None = None) -> Calibration:
    """Calibrate the float ONNX model ``fp32`` on encoded ``rows`` and write its int8 model."""
    import onnx

    RANGE_METHODS.get(method)
    if len(rows) < MIN_SAMPLES:
        raise InputError(f"int8 calibration needs at least {MIN_SAMPLES} samples, got {len(rows)}: "
                         "give a larger calibration file (a few hundred samples is typical)")
    start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    held = held_aside(len(rows))
    calib_rows = [r for r, h in zip(rows, held) if not h]
    held_rows, held_labels = [r for r, h in zip(rows, held) if h], labels[held]
    fp32_model = onnx.load(str(fp32))
    nodes = quantizable_nodes(fp32_model)
    activations = sorted({n.activation for n in nodes})
    histograms = observe(fp32, calib_rows, encoder, activations, workdir, progress=progress)
    ranges = {name: activation_range(histograms[name], method) for name in activations}
    observed = time.perf_counter()
    reference = onnx_logits(fp32, held_rows, encoder)
    int8, tables = quantize_all(fp32, ranges, [n.node for n in nodes])

    def trial(float_nodes: set[str]) -> dict[str, float]:
        model = with_float_nodes(int8, fp32_model, float_nodes)
        return _effect(reference, onnx_logits(model.SerializeToString(), held_rows, encoder), held_labels)

    sensitivity = []
    for i, node in enumerate(nodes):
        if progress is not None:
            progress(f"sensitivity {i + 1}/{len(nodes)}: {node.layer}")
        alone = trial({n.node for n in nodes} - {node.node})
        sensitivity.append({"layer": node.layer, "node": node.node, "op": node.op, **alone})
    ranked = sorted(sensitivity, key=lambda s: (s["agreement"], -s["mean_abs_diff"]))
    kept, effect, steps = search_float_layers(ranked, trial, budget, progress)
    float_nodes = {s["node"] for s in ranked[:kept]}
    out = workdir / "model.int8.onnx"
    final = with_float_nodes(int8, fp32_model, float_nodes)
    qparams = activation_qparams(final)
    onnx.save_model(final, str(out))
    if progress is not None:
        progress("layer-by-layer divergence of the int8 model")
    divergence = layer_divergence(fp32, out, held_rows[:16], encoder, workdir, {n.node for n in nodes} - float_nodes)
    quantized = [n for n in nodes if n.node not in float_nodes]
    return Calibration(
        fp32=fp32,
        model=out,
        ranges={
            "format": "edgesdk-int8-ranges",
            "method": method,
            "activations": {name: {"lo": float(lo), "hi": float(hi), **qparams.get(name, {}),
                                   "quantized": name in qparams} for name, (lo, hi) in sorted(ranges.items())},
            "weights": {"dtype": "int8", "scheme": "symmetric per output channel",
                        "layers": sorted(n.layer for n in quantized)},
            "embeddings": {"dtype": "int8", "scheme": "symmetric per row", "tables": tables},
        },
        float_layers=ranked[:kept],
        sensitivity=ranked,
        met_budget=_meets(effect, budget),
        figures={
            "method": method, "samples": len(calib_rows), "held_aside": len(held_rows),
            "quantized_layers": len(quantized), "quantizable_layers": len(nodes),
            "held_aside_effect": effect, "search": steps,
            "budget": {"min_agreement": budget.min_agreement, "max_accuracy_drop": budget.max_accuracy_drop},
            "divergence": divergence,
            "observe_s": observed - start, "seconds": time.perf_counter() - start,
        },
    )
