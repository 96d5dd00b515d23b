"""TFLite (LiteRT) target: converted by litert-torch from the PyTorch graph, run by ai-edge-litert.

Why litert-torch: it converts the same graph the ONNX export uses, straight from PyTorch,
with float parity near 1e-6 on our models, and it is Google's maintained path. It converts
fixed shapes only, so the model takes one sample of a fixed shape, recorded in the manifest
(``build.fixed_inputs``), and the torch-free runner adapts each sample: text is padded to
``max_length`` (pad id, mask 0: the logits do not change); images are resized to the
model's size with the same bilinear resize as the graph (``edgesdk.runtime.resize``) and
fed as float pixels, so the in-graph resize is an identity. Inputs are int32 (LiteRT
downcasts int64).

int8: ai-edge-quantizer's dynamic-range recipe (int8 weights per channel, activations
quantized by the kernels at run time, so no calibrated activation ranges are used), or,
when that misses the int8 budget on the calibration's held-aside samples, its weight-only
recipe (int8 weights, float compute). Full static int8 of a transformer in TFLite kept only
59% top-1 agreement when measured, so it is not offered. Which recipe was kept, and the
agreement each reached, is in the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgesdk.runtime.encode import in_row_order
from edgesdk.runtime.runner import import_runtime

from .base import TARGETS, Target

__all__ = ["TfliteTarget"]

RECIPES = (
    ("dynamic_wi8_afp32", "dynamic range: int8 weights per channel, activations quantized at run time"),
    ("weight_only_wi8_afp32", "weight-only: int8 weights per channel, float compute"),
)


def _fixed_inputs(classifier: Any) -> tuple:
    """One sample of the fixed shape the TFLite model takes: text at max_length, images as
    float pixels at the model's own size."""
    import torch

    pre = classifier.spec.preprocessing
    if classifier.spec.kind == "image":
        return (torch.zeros((1, *pre.size, pre.channels), dtype=torch.float32),)
    return classifier.example_inputs(batch=1, length=pre.max_length)


@TARGETS.register("tflite")
class TfliteTarget(Target):
    name = "tflite"
    runtime = "ai-edge-litert"
    extra = "tflite"
    distribution = "ai-edge-litert"
    precisions = ("fp32", "int8")
    model_file = "model.tflite"

    def build(self, artifacts: Any, precision: str, folder: Path) -> dict[str, Any]:
        litert_torch = import_runtime("litert_torch", self.extra)
        import_runtime("ai_edge_litert.interpreter", self.extra)
        litert_torch.config.show_progress = False
        classifier = artifacts.classifier
        sample = _fixed_inputs(classifier)
        notes: dict[str, Any] = {
            "converter": f"litert-torch {getattr(litert_torch, '__version__', '')}".strip(),
            "fixed_inputs": {t.name: list(x.shape) for t, x in zip(classifier.spec.inputs, sample)},
        }
        out = folder / self.model_file
        if precision == "fp32":
            litert_torch.convert(classifier.graph().eval(), sample).export(str(out))
            return notes
        calibration = artifacts.calibration()
        float_model = artifacts.workdir / "model.fp32.tflite"
        if not float_model.exists():
            litert_torch.convert(classifier.graph().eval(), sample).export(str(float_model))
        notes.update(self._quantize(float_model, out, artifacts), **self.write_ranges(calibration, folder))
        return notes

    def _quantize(self, float_model: Path, out: Path, artifacts: Any) -> dict[str, Any]:
        """The first recipe that keeps the int8 budget against the float model, judged as edgesdk's
        calibration judges (on the verification data when given)."""
        from ai_edge_quantizer import quantizer, recipe

        from edgesdk.calibration import held_aside
        from edgesdk.calibration.calibrate import effect, meets

        plan, spec = artifacts.plan, artifacts.classifier.spec
        encoder = artifacts.classifier.encoder()
        if artifacts.judge is not None:
            rows, labels, judged_on = artifacts.judge.rows, artifacts.judge.labels, "verification data"
        else:
            held = held_aside(len(plan.samples))
            rows = encoder.encode([item for item, h in zip(plan.samples.items, held) if h])
            labels = plan.samples.labels[held]
            judged_on = "calibration samples held aside"

        def logits_of(model: Path) -> np.ndarray:
            with self.runner(model, spec) as runner:
                return in_row_order((idx, runner.infer(f)["logits"]) for idx, f in encoder.batches(rows, 32)
                                    ).astype(np.float64)

        reference = logits_of(float_model)
        tried, chosen = [], ""
        for name, description in RECIPES:
            chosen = description
            q = quantizer.Quantizer(str(float_model))
            q.load_quantization_recipe(getattr(recipe, name)())
            out.unlink(missing_ok=True)
            q.quantize(enable_progress_report=False).export_model(str(out))
            e = effect(reference, logits_of(out), labels)
            tried.append({"recipe": name, "agreeing": e["agreeing"], "samples": e["samples"],
                          "expected_changes": e["expected_changes"]})
            if meets(e, plan.budget):
                break
        return {"int8": chosen, "quantizer": "ai-edge-quantizer", "recipes_tried": tried, "judged_on": judged_on,
                "activation_ranges": "computed at run time (edgesdk's ranges.json is not used by this runtime)"}
