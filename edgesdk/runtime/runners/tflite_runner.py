"""Runs a bundle's fixed-shape .tflite with ai-edge-litert's interpreter.

The model takes one sample of a fixed shape (``build.fixed_inputs`` in the manifest), so
each sample is adapted: text is padded to the model's length (pad id, mask 0: the logits
do not change); images are resized to the model's size with the same bilinear resize as
the graph (``edgesdk.runtime.resize``) and fed as float pixels. A full-integer model's int8
inputs and outputs are quantized and dequantized with the scales the model carries.
"""

from __future__ import annotations

import numpy as np

from ..resize import bilinear_resize
from ..runner import Runner, import_runtime

__all__ = ["TfliteRunner"]


class TfliteRunner(Runner):
    """Runs a fixed-shape .tflite one sample at a time with ai-edge-litert's interpreter."""

    def activate(self) -> None:
        litert = import_runtime("ai_edge_litert.interpreter", "tflite")
        self.interpreter = litert.Interpreter(model_path=str(self.model_path), num_threads=2)
        self.runner = self.interpreter.get_signature_runner()
        details = self.runner.get_input_details()  # args_0, args_1, ...: the graph's inputs in order
        self.inputs = {t.name: (f"args_{k}", tuple(details[f"args_{k}"]["shape"]), details[f"args_{k}"]["dtype"])
                       for k, t in enumerate(self.spec.inputs)}
        self.signature = next(iter(self.interpreter.get_signature_list()))
        self.tensor_names = {arg: d["name"] for arg, d in details.items()}  # args_k: the tensor's name
        self.quantization = {name: d["quantization"] for name, d in
                             [*details.items(), *self.runner.get_output_details().items()] if d["quantization"][0]}

    def deactivate(self) -> None:
        self.interpreter = self.runner = None

    def model_inputs(self, feeds: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
        """Sample ``i`` of ``feeds`` as the model's arguments (``args_k``), before quantization:
        padded to the model's length or resized to its size."""
        pre = self.spec.preprocessing
        out = {}
        for name, (arg, shape, dtype) in self.inputs.items():
            value = feeds[name][i]
            if self.spec.kind == "image":
                value = bilinear_resize(value, shape[1:3])
            else:  # pad ids with the pad id, masks and token types with 0
                fill = pre.pad_id if name == "input_ids" else 0
                value = np.pad(value[: shape[1]], (0, shape[1] - min(len(value), shape[1])), constant_values=fill)
            out[arg] = value[None].astype(np.float32 if arg in self.quantization else dtype)
        return out

    def _sample(self, feeds: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
        out = self.model_inputs(feeds, i)
        for arg, _, dtype in self.inputs.values():
            if arg in self.quantization:
                scale, zero = self.quantization[arg]
                bounds = np.iinfo(dtype)
                out[arg] = np.clip(np.round(out[arg] / scale) + zero, bounds.min, bounds.max).astype(dtype)
        return out

    def _output(self, row: dict[str, np.ndarray], k: int) -> np.ndarray:
        value = row[f"output_{k}"]
        if f"output_{k}" in self.quantization:
            scale, zero = self.quantization[f"output_{k}"]
            return (value.astype(np.float32) - zero) * scale
        return value

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [t.name for t in self.spec.outputs]
        rows = [self.runner(**self._sample(feeds, i)) for i in range(len(next(iter(feeds.values()))))]
        return {name: np.concatenate([self._output(r, k) for r in rows]).astype(np.dtype(t.dtype))
                for k, (name, t) in enumerate(zip(names, self.spec.outputs))}
