"""TFLite (LiteRT) target: converted by litert-torch from the PyTorch graph, run by ai-edge-litert.

Why litert-torch: it converts the same graph the ONNX export uses, straight from PyTorch,
with float parity near 1e-6 on our models, and it is Google's maintained path. It converts
fixed shapes only, so the model takes one sample of a fixed shape, recorded in the manifest
(``build.fixed_inputs``), and the torch-free runner adapts each sample: text is padded to
``max_length`` (pad id, mask 0: the logits do not change); images are resized to the
model's size with the same bilinear resize as the graph (``edgesdk.runtime.resize``) and
fed as float pixels, so the in-graph resize is an identity. Inputs are int32 (LiteRT
downcasts int64).

int8: weights of every Linear and Conv layer int8 per output channel, activations float
(litert-torch's dynamic-range ``PT2EQuantizer`` config, whose activation ranges are
computed per run, not calibrated): full static int8 of a transformer in TFLite kept only
59% agreement when measured, so this bundle keeps activations in float and says so. The
layers edgesdk's calibration keeps in float stay float here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgesdk.runtime.resize import bilinear_resize
from edgesdk.runtime.runner import Runner, import_runtime

from .base import TARGETS, Target

__all__ = ["TfliteTarget", "TfliteRunner"]


class TfliteRunner(Runner):
    """Runs a fixed-shape .tflite one sample at a time with ai-edge-litert's interpreter."""

    def activate(self) -> None:
        litert = import_runtime("ai_edge_litert.interpreter", "tflite")
        self.interpreter = litert.Interpreter(model_path=str(self.model_path), num_threads=2)
        self.runner = self.interpreter.get_signature_runner()
        details = self.runner.get_input_details()
        self.inputs = {name: (tuple(d["shape"]), d["dtype"]) for name, d in details.items()}

    def deactivate(self) -> None:
        self.interpreter = self.runner = None

    def _sample(self, feeds: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
        pre = self.spec.preprocessing
        out = {}
        for name, (shape, dtype) in self.inputs.items():
            value = feeds[name][i]
            if self.spec.kind == "image":
                value = bilinear_resize(value, shape[1:3])
            else:  # pad ids with the pad id, masks and token types with 0
                fill = pre.pad_id if name == "input_ids" else 0
                value = np.pad(value[: shape[1]], (0, shape[1] - min(len(value), shape[1])), constant_values=fill)
            out[name] = value[None].astype(dtype)
        return out

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [t.name for t in self.spec.outputs]
        rows = [self.runner(**self._sample(feeds, i)) for i in range(len(next(iter(feeds.values()))))]
        return {name: np.concatenate([r[f"output_{k}"] for r in rows]).astype(np.dtype(t.dtype))
                for k, (name, t) in enumerate(zip(names, self.spec.outputs))}


def _fixed_inputs(classifier: Any) -> tuple:
    import torch

    spec, pre = classifier.spec, classifier.spec.preprocessing
    if spec.kind == "image":
        return (torch.zeros((1, *pre.size, pre.channels), dtype=torch.float32),)
    ids = torch.full((1, pre.max_length), pre.pad_id, dtype=torch.long)
    ones = torch.ones_like(ids)
    feeds = {"input_ids": ids, "attention_mask": ones, "token_type_ids": torch.zeros_like(ids)}
    return tuple(feeds[t.name] for t in spec.inputs)


@TARGETS.register("tflite")
class TfliteTarget(Target):
    name = "tflite"
    runtime = "ai-edge-litert"
    extra = "tflite"
    distribution = "ai-edge-litert"
    precisions = ("fp32", "int8")
    model_file = "model.tflite"
    runner_class = TfliteRunner

    def build(self, artifacts: Any, precision: str, folder: Path) -> dict[str, Any]:
        litert_torch = import_runtime("litert_torch", self.extra)
        import_runtime("ai_edge_litert.interpreter", self.extra)
        classifier = artifacts.classifier
        sample = _fixed_inputs(classifier)
        notes: dict[str, Any] = {
            "converter": f"litert-torch {getattr(litert_torch, '__version__', '')}".strip(),
            "fixed_inputs": {t.name: list(x.shape) for t, x in zip(classifier.spec.inputs, sample)},
        }
        graph = classifier.graph().eval()
        quant_config = None
        if precision == "int8":
            calibration = artifacts.calibration()
            quant_config, float_layers = self._weight_only_config(graph, calibration)
            notes.update(int8="weights int8 per output channel (Linear, Conv); activations float (dynamic range)",
                         float_layers=float_layers, **self.write_ranges(calibration, folder))
        edge = litert_torch.convert(graph, sample, quant_config=quant_config)
        edge.export(str(folder / self.model_file))
        return notes

    @staticmethod
    def _weight_only_config(graph: Any, calibration: Any) -> tuple[Any, list[str]]:
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig

        quantizer = PT2EQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
        modules = dict(graph.named_modules())
        float_layers = [f["layer"] for f in calibration.float_layers if f"model.{f['layer']}" in modules]
        for layer in float_layers:
            quantizer.set_module_name(f"model.{layer}", None)
        return QuantConfig(pt2e_quantizer=quantizer), float_layers
