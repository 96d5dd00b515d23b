"""TFLite (LiteRT) target: converted by litert-torch from the PyTorch graph, run by ai-edge-litert.

Why litert-torch: it converts the same graph the ONNX export uses, straight from PyTorch,
with float parity near 1e-6 on our models, and it is Google's maintained path. Its models
have fixed shapes, so a bundle's .tflite holds one signature per shape, sharing the weights
(``build.signatures`` in the manifest): a text model one per sequence length (max_length and
up to three halvings, ``len_N``), so a short text runs at a short text's cost; an image model
one at its own size. The torch-free runner adapts each sample: text goes to the shortest
signature that holds it, padded (pad id, mask 0: the logits do not change); images are
resized to the model's size with the same bilinear resize as the graph
(``edgesdk.runtime.resize``) and fed as float pixels, so the in-graph resize is an identity.
Inputs are int32 (LiteRT downcasts int64).

Grouped-query attention (Llama, Qwen2: fewer key/value heads than query heads) repeats each
key head with a 5-D ``expand`` (``x[:, :, None].expand(b, kv, n, s, d)``); with one key/value
head litert-torch 0.10 miscomputes the MatMul that reads those keys transposed (errors as large
as the outputs), while the same keys built by concatenation convert exactly, so the conversion
runs with those expands written as ``cat`` (``litert_heads``).

int8: the first of ai-edge-quantizer's recipes that keeps the int8 budget, judged as edgesdk's
calibration judges (on the verification data when given):

- ``full_integer``: int8 weights per channel and int8 activations with calibrated ranges, built
  from edgesdk's calibration (``tflite_int8``): the same smoothing (converted from the PyTorch
  model with calibration's scales written in, ``litert_smoothing``), the same range method over
  the same samples (every signature calibrated), and the same layers kept float (found by their weights; what
  reads a float model output stays float too), plus as many of calibration's next most
  sensitive layers as the budget needs (a LiteRT int8 layer also rounds its output to int8),
  chosen by calibration's own search (``float_layers_added``, ``float_layer_search``). Then, each
  search on top of the last, all but the fewest most sensitive the budget needs float whole get
  int8 weights per channel: the float layers to which the ONNX int8 gives int8 weight blocks
  (LiteRT has no int8 blocks) weight-only, computing in float; those added for LiteRT dynamic
  range (input quantized at run time, output float as in the ONNX int8: no output rounding, at
  int8 speed), and of those left, weight-only (``float_layers_int8_weights``,
  ``float_layers_dynamic_range``, ``int8_weight_search``). Image
  models: every op but the head writing the outputs, int8 pixels in (uint8 minus 128: the
  input's range is 0..255); outputs float (XNNPACK garbles an int8 output another op reads).
  Text models, and image models with attention (``tflite_int8._attends``): the layers with
  weights (fully connected, convolutions) and the token embedding tables
  (column-scaled as the ONNX int8's, ``litert_smoothing``), every other op float (counted in
  ``float_ops``). Measured on MiniLM fine-tuned on SST-2
  (``bench/tflite_int8.py``, 2000 test texts, AVX-512 VNNI CPU, 128 tokens): every op int8
  kept 86.9% top-1 agreement; the weight layers alone 97.2% at dynamic range's speed (6.7
  against 6.9 ms), 98.6% with calibration's float layers (9.5 ms); 16-bit activations 100%,
  but 25x slower than fp32 on XNNPACK, so not offered. A full-integer model that keeps the
  budget only with more than half its layers float (``MAX_FLOAT_SHARE``) is passed over for the
  next recipe that keeps it, the reason in ``recipes_tried``: no integer-only accelerator runs it,
  and a CPU runs dynamic range faster; it ships only when no other recipe keeps the budget.
- ``dynamic_range``: int8 weights per channel, activations quantized by the kernels at run time.
- ``weight_only``: int8 weights, float compute.

The manifest names the recipe kept, the agreement each tried reached, and whether every
tensor the model computes is an integer one (``integer_only``, with the float exceptions).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgesdk.runtime.encode import in_row_order
from edgesdk.runtime.runner import import_runtime

from .base import TARGETS, Target
from .litert_smoothing import ColumnScaledEmbedding, SmoothedLinear, smoothed_model
from .tflite_int8 import DYNAMIC_RANGE, WEIGHT_ONLY, FullInteger, builtin_op_names, float_layer_weights

__all__ = ["TfliteTarget", "convert_signatures", "sequence_lengths"]

RECIPES = {  # edgesdk's name: (ai-edge-quantizer's recipe, what it is)
    "full_integer": ("static_wi8_ai8", "full integer: int8 weights per channel, int8 activations with calibrated "
                     "ranges (CNNs: every op but the output head, int8 pixels in; text models and models with "
                     "attention: the layers with weights)"),
    "dynamic_range": ("dynamic_wi8_afp32", "dynamic range: int8 weights per channel, activations quantized at run "
                      "time"),
    "weight_only": ("weight_only_wi8_afp32", "weight-only: int8 weights per channel, float compute"),
}


INT8_PER_CHANNEL = "int8 per channel, float compute"  # a float layer's weights, weight-only (``_int8_weights``)
MAX_FLOAT_SHARE = 0.5  # a full integer with more of its layers out of static int8 gives way to dynamic range

SIGNATURES = 4  # sequence lengths of a text model: max_length, and halved down to MIN_LENGTH
MIN_LENGTH = 8


def sequence_lengths(max_length: int) -> list[int]:
    """The sequence lengths a text model gets a signature for: ``max_length`` and up to three
    halvings of it (not below ``MIN_LENGTH``)."""
    return sorted({min(max_length, max(MIN_LENGTH, max_length >> k)) for k in range(SIGNATURES)})


def _signatures(classifier: Any) -> dict[str, tuple]:
    """One sample per signature of the TFLite model: text at each of ``sequence_lengths``
    (``len_N``), images as float pixels at the model's own size (``serving_default``)."""
    import torch

    pre = classifier.spec.preprocessing
    if classifier.spec.kind == "image":
        return {"serving_default": (torch.zeros((1, *pre.size, pre.channels), dtype=torch.float32),)}
    return {f"len_{n}": classifier.example_inputs(batch=1, length=n) for n in sequence_lengths(pre.max_length)}


@TARGETS.register("tflite")
class TfliteTarget(Target):
    name = "tflite"
    runtime = "ai-edge-litert"
    extra = "tflite"
    distribution = "ai-edge-litert"
    precisions = ("fp32", "int8")
    model_file = "model.tflite"
    purposes = {"model.tflite": "the model: ai-edge-litert (LiteRT) runs it, one signature per input shape"}

    def build(self, artifacts: Any, precision: str, folder: Path) -> dict[str, Any]:
        litert_torch = import_runtime("litert_torch", self.extra)
        import_runtime("ai_edge_litert.interpreter", self.extra)
        classifier = artifacts.classifier
        signatures = _signatures(classifier)
        notes: dict[str, Any] = {
            "converter": f"litert-torch {getattr(litert_torch, '__version__', '')}".strip(),
            "signatures": {name: {t.name: list(x.shape) for t, x in zip(classifier.spec.inputs, sample)}
                           for name, sample in signatures.items()},
        }
        float_model = artifacts.workdir / "model.fp32.tflite"
        if not float_model.exists():  # converted once for both precisions
            convert_signatures(litert_torch, classifier.graph().eval(), signatures, float_model)
        out = folder / self.model_file
        if precision == "fp32":
            shutil.copyfile(float_model, out)
            return notes
        notes.update(self._quantize(float_model, out, artifacts))
        weights = {layer: INT8_PER_CHANNEL for layer in notes.get("float_layers_int8_weights", [])}
        notes["calibration"] = artifacts.calibration().summary(weights)
        return notes

    def _quantize(self, float_model: Path, out: Path, artifacts: Any) -> dict[str, Any]:
        """The first recipe that keeps the int8 budget against the float model, judged as edgesdk's
        calibration judges (on the verification data when given); a mostly float full integer
        (``_mostly_float``) only when no other recipe does."""
        from ai_edge_quantizer import quantizer, recipe

        from edgesdk.calibration import held_aside
        from edgesdk.calibration.calibrate import JUDGEMENTS, effect, meets

        plan, spec = artifacts.plan, artifacts.classifier.spec
        encoder = artifacts.classifier.encoder()
        held = held_aside(len(plan.samples))
        if artifacts.judge is not None:
            rows, labels, judged_on = artifacts.judge.rows, artifacts.judge.labels, "verification data"
            calibrating = list(plan.samples.items)
        else:
            rows = encoder.encode([item for item, h in zip(plan.samples.items, held) if h])
            labels = plan.samples.labels[held]
            judged_on = "calibration samples held aside"
            calibrating = [item for item, h in zip(plan.samples.items, held) if not h]

        def logits_of(model: Path) -> np.ndarray:
            with self.runner(model, spec) as runner:
                return in_row_order((idx, runner.infer(f)["logits"]) for idx, f in encoder.batches(rows, 32)
                                    ).astype(np.float64)

        reference = logits_of(float_model)
        calibration = artifacts.calibration()

        def judged(model: Path) -> dict[str, Any]:
            return effect(reference, logits_of(model), labels)

        tried, chosen, extra, judgement, caveat = [], "", {}, "bound", ""
        mostly_float, fallback = artifacts.workdir / "model.mostly_float.tflite", None  # full integer, kept in reserve
        for chosen in RECIPES:
            if chosen == "full_integer":
                e, extra, judgement = self._full_integer(float_model, out, artifacts, calibrating, judged)
            else:
                q = quantizer.Quantizer(str(float_model))
                q.load_quantization_recipe(getattr(recipe, RECIPES[chosen][0])())
                out.unlink(missing_ok=True)
                q.quantize(None, enable_progress_report=False).export_model(str(out))
                e, extra = judged(out), {}
            tried.append({"recipe": chosen, "agreeing": e["agreeing"], "samples": e["samples"],
                          "expected_changes": e["expected_changes"]})
            if not meets(e, plan.budget, **JUDGEMENTS[judgement]):
                continue
            passed_over = _mostly_float(extra, len(calibration.quantized_nodes)) if chosen == "full_integer" else None
            if passed_over is None:
                break
            tried[-1]["passed_over"] = passed_over
            shutil.copyfile(out, mostly_float)
            fallback = (extra, judgement)
        else:
            if fallback is not None:  # no other recipe kept the budget: the mostly float full integer ships
                chosen, (extra, judgement) = "full_integer", fallback
                caveat = f", shipped as no other recipe kept the budget, though {tried[0]['passed_over']}"
                shutil.copyfile(mostly_float, out)
        ranges_used = (f"edgesdk's {calibration.ranges['method']} ranges over edgesdk's calibration samples, taken "
                       "on this model's own tensors" if chosen == "full_integer" else
                       "computed at run time by the kernels")
        return {"int8": RECIPES[chosen][1] + caveat, "recipe": chosen, "quantizer": "ai-edge-quantizer",
                "recipes_tried": tried, "judged_on": judged_on, "judged_by": judgement,
                "activation_ranges": ranges_used, **extra,
                **(_integer_only(out) if chosen == "full_integer" else {"integer_only": False})}

    def _full_integer(self, float_model: Path, out: Path, artifacts: Any, items: list[Any],
                      judged: Callable[[Path], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], str]:
        """Write the full-integer model with edgesdk's float layers, and as few more as the budget
        needs: LiteRT's int8 ops also write int8 outputs, where edgesdk's ONNX int8 keeps them
        float. The extra layers are the most sensitive of edgesdk's ranking, chosen by
        calibration's own search (doubling, then bisection). Returns the effect, the notes and how
        the search judged (``search_float_layers``)."""
        from edgesdk.calibration.calibrate import JUDGEMENTS, meets, search_float_layers

        calibration, budget = artifacts.calibration(), artifacts.plan.budget
        base = {f["node"] for f in calibration.float_layers}
        ranked = [s for s in calibration.sensitivity if s["node"] not in base | calibration.forced_int8]
        weights = float_layer_weights(artifacts.onnx_fp32(), [*calibration.float_layers, *ranked])
        kept = {f["layer"] for f in calibration.float_layers}
        with self.runner(_smoothed_float_model(artifacts, float_model, kept), artifacts.classifier.spec) as runner:
            full = FullInteger(runner, artifacts.classifier.encoder(), items, calibration.ranges["method"], weights,
                               kept)

        def trial(extra: set[str]) -> dict[str, Any]:
            full.write(out, kept | {s["layer"] for s in ranked if s["node"] in extra})
            return judged(out)

        count, e, steps, judgement = search_float_layers(ranked, trial, budget, None)
        added = [s["layer"] for s in ranked[:count]]
        float_layers = kept | set(added)
        forms, weights_effect, weight_steps = {}, None, []
        if meets(e, budget, **JUDGEMENTS[judgement]):
            forms, weights_effect, weight_steps = _int8_weights(full, out, calibration, kept, set(added), judged,
                                                                budget, judgement)
        static = full.write(out, float_layers, forms)
        return weights_effect or e, {
            "float_layers": static.float_layers, "float_layers_added": added,
            "float_layers_int8_weights": sorted(k for k, form in forms.items() if form == WEIGHT_ONLY),
            "float_layers_dynamic_range": sorted(k for k, form in forms.items() if form == DYNAMIC_RANGE),
            "float_layers_not_found": static.unmatched,
            "float_layer_search": _steps(steps, "added"), "int8_weight_search": _steps(weight_steps, "float_weights")
        }, judgement


def _int8_weights(full: FullInteger, out: Path, calibration: Any, kept: set[str], added: set[str],
                  judged: Callable[[Path], dict[str, Any]], budget: Any, judgement: str
                  ) -> tuple[dict[str, str], dict[str, Any] | None, list[dict[str, Any]]]:
    """Of the layers out of static int8 (calibration's ``kept`` and those ``added`` for LiteRT),
    those that keep the budget with int8 weights per channel, and their form, in three searches,
    each on top of the ones before:

    1. calibration's layers to which the ONNX int8 gives int8 weight blocks (LiteRT has no int8
       blocks): ``WEIGHT_ONLY``, computing in float as there;
    2. those added for LiteRT (static int8 in the ONNX int8, where an int8 layer writes a float
       output): ``DYNAMIC_RANGE``, the input quantized at run time and the output float, so no
       output rounding, at int8 speed (XNNPACK's dynamic-range kernels);
    3. those added that stayed float in 2: ``WEIGHT_ONLY`` (a quarter of their bytes).

    Each takes all but its fewest most sensitive, by calibration's own search
    (``search_int8_weights``); separate searches, since calibration's float layers lead its
    ranking whatever they cost in LiteRT. Returns the form of each layer given int8 weights, their
    effect (None when none) and the steps of every search (``phase`` 1 to 3)."""
    from edgesdk.calibration.calibrate import search_int8_weights

    layer = {s["node"]: s["layer"] for s in calibration.sensitivity}
    float_layers, forms, effect, steps = kept | added, {}, None, []

    def trial(nodes: set[str], form: str) -> dict[str, Any]:
        full.write(out, float_layers, {**forms, **{layer[n]: form for n in nodes}})
        return judged(out)

    phases = ((WEIGHT_ONLY, lambda s: s["layer"] in kept and s["node"] in calibration.blocks),
              (DYNAMIC_RANGE, lambda s: s["layer"] in added), (WEIGHT_ONLY, lambda s: s["layer"] in added))
    for phase, (form, wanted) in enumerate(phases, start=1):
        candidates = [s for s in calibration.sensitivity if wanted(s) and s["layer"] not in forms]
        nodes, found, tried = search_int8_weights(candidates, partial(trial, form=form), budget, None, judgement)
        forms.update({layer[n]: form for n in nodes})
        effect = found or effect
        steps += [{**step, "phase": phase} for step in tried]
    return forms, effect, steps


def _steps(steps: list[dict[str, Any]], counted: str) -> list[dict[str, Any]]:
    """A search's steps as the manifest lists them: the layers ``counted``, the answers kept, and
    the search's ``phase`` where it had several."""
    return [{**({"phase": step["phase"]} if "phase" in step else {}), counted: step["float_layers"],
             "agreeing": step["agreeing"], "samples": step["samples"], "expected_changes": step["expected_changes"]}
            for step in steps]


def _smoothed_float_model(artifacts: Any, float_model: Path, kept: set[str]) -> Path:
    """The float .tflite with edgesdk's calibration smoothing written in (``litert_smoothing``)
    for the layers that may be int8 (not those of ``kept``, which stay float), and its token
    tables column-scaled, which full integer quantizes; ``float_model`` when there is neither."""
    classifier = artifacts.classifier
    scales = {layer: s for layer, s in artifacts.calibration().smoothing.items() if layer not in kept}
    smoothed = smoothed_model(classifier.model, scales)
    if not any(isinstance(m, (SmoothedLinear, ColumnScaledEmbedding)) for m in smoothed.modules()):
        return float_model
    out = artifacts.workdir / "model.smoothed.tflite"
    convert_signatures(import_runtime("litert_torch", "tflite"), classifier.with_model(smoothed).graph().eval(),
                       _signatures(classifier), out)
    return out


def _mostly_float(notes: dict[str, Any], layers: int) -> str | None:
    """Why a full-integer model that keeps the budget gives way to the next recipe that keeps it
    (more than ``MAX_FLOAT_SHARE`` of its ``layers`` out of static int8: no integer-only
    accelerator runs it, and a CPU runs dynamic range's int8 weights faster); None when it doesn't."""
    kept = len(notes.get("float_layers", []))
    if kept <= MAX_FLOAT_SHARE * layers:
        return None
    return (f"it kept the budget only with {kept} of its {layers} layers out of static int8 "
            f"({len(notes.get('float_layers_added', []))} more than edgesdk's calibration; "
            f"{len(notes.get('float_layers_dynamic_range', []))} of them dynamic range, "
            f"{len(notes.get('float_layers_int8_weights', []))} with int8 weights computing in float): no "
            "integer-only accelerator runs it")


def convert_signatures(litert_torch: Any, graph: Any, signatures: dict[str, tuple], out: Path) -> None:
    """Convert ``graph`` with one signature per sample of ``signatures`` (their weights shared)."""
    litert_torch.config.show_progress = False
    converter = None
    for name, sample in signatures.items():
        converter = (litert_torch.signature(name, graph, sample) if converter is None
                     else converter.signature(name, graph, sample))
    from .litert_heads import RepeatedHeadsByConcat

    with RepeatedHeadsByConcat():
        converter.convert().export(str(out))


def _integer_only(model: Path) -> dict[str, Any]:
    """Whether every tensor of ``model`` is an integer one; if not, the float tensors and how many
    ops of each kind compute in float (in one signature: all have the same ops)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    op_names = builtin_op_names()
    flat = tfl.read_model(str(model))
    graph = flat.subgraphs[0]
    is_float = [tfl.TENSOR_CODE_TO_TYPE[t.type].startswith(("FLOAT", "BFLOAT")) for t in graph.tensors]
    floats = sorted(t.name.decode() for t, f in zip(graph.tensors, is_float) if f)
    float_ops: dict[str, int] = {}
    for op in graph.operators:
        kind = op_names[flat.operatorCodes[op.opcodeIndex].builtinCode]
        if kind != "DEQUANTIZE" and any(is_float[t] for t in op.outputs):
            float_ops[kind] = float_ops.get(kind, 0) + 1
    return {"integer_only": not floats, "float_tensors": floats[:10], "float_ops": dict(sorted(float_ops.items()))}
