"""Runs a bundle's .tflite with ai-edge-litert's interpreter, one sample at a time.

The model has one signature per fixed shape (``build.signatures`` in the manifest), so each
sample is adapted: text goes to the signature with the shortest sequence that holds its
tokens and is padded to it (pad id, mask 0: the logits do not change); images are resized to
the model's size with the same bilinear resize as the graph (``edgesdk.runtime.resize``) and
fed as float pixels. A full-integer model's int8 inputs and outputs are quantized and
dequantized with the scales the model carries.
"""

from __future__ import annotations

import numpy as np

from ..resize import bilinear_resize
from ..runner import Runner, import_runtime

__all__ = ["TfliteRunner"]

Inputs = dict[str, tuple[str, tuple[int, ...], type]]  # the spec's input name: (argument, shape, dtype)


class TfliteRunner(Runner):
    """Runs a .tflite one sample at a time, each in the smallest of its signatures that holds it."""

    def activate(self) -> None:
        litert = import_runtime("ai_edge_litert.interpreter", "tflite")
        self.interpreter = litert.Interpreter(model_path=str(self.model_path), num_threads=2)
        self.runners, self.signatures = {}, {}
        for name in self.interpreter.get_signature_list():
            self.runners[name] = self.interpreter.get_signature_runner(name)
            details = self.runners[name].get_input_details()  # args_0, args_1, ...: the graph's inputs in order
            self.signatures[name] = {t.name: (f"args_{k}", tuple(details[f"args_{k}"]["shape"]),
                                              details[f"args_{k}"]["dtype"]) for k, t in enumerate(self.spec.inputs)}
        self.signatures = dict(sorted(self.signatures.items(), key=lambda item: _length(item[1])))
        self.signature = next(reversed(self.signatures))  # the largest: what a sample too long for all is cut to
        self.inputs = self.signatures[self.signature]
        default = self.runners[self.signature]
        self.tensor_names = {arg: d["name"] for arg, d in default.get_input_details().items()}
        self.quantization = {name: d["quantization"] for name, d in  # the same in every signature
                             [*default.get_input_details().items(), *default.get_output_details().items()]
                             if d["quantization"][0]}

    def deactivate(self) -> None:
        self.interpreter = self.runners = None

    def signature_for(self, feeds: dict[str, np.ndarray], i: int) -> str:
        """The signature sample ``i`` of ``feeds`` runs in: for text, the shortest that holds its tokens."""
        if self.spec.kind == "image":
            return self.signature
        mask = feeds.get("attention_mask")
        tokens = int(mask[i].sum()) if mask is not None else len(feeds["input_ids"][i])
        return next((name for name, inputs in self.signatures.items() if _length(inputs) >= tokens), self.signature)

    def model_inputs(self, feeds: dict[str, np.ndarray], i: int, signature: str | None = None) -> dict[str, np.ndarray]:
        """Sample ``i`` of ``feeds`` as the arguments (``args_k``) of ``signature`` (the largest by
        default), before quantization: padded to its length or resized to its size."""
        pre = self.spec.preprocessing
        out = {}
        for name, (arg, shape, dtype) in self.signatures[signature or self.signature].items():
            value = feeds[name][i]
            if self.spec.kind == "image":
                value = bilinear_resize(value, shape[1:3])
            else:  # pad ids with the pad id, masks and token types with 0
                fill = pre.pad_id if name == "input_ids" else 0
                value = np.pad(value[: shape[1]], (0, shape[1] - min(len(value), shape[1])), constant_values=fill)
            out[arg] = value[None].astype(np.float32 if arg in self.quantization else dtype)
        return out

    def _sample(self, feeds: dict[str, np.ndarray], i: int, signature: str) -> dict[str, np.ndarray]:
        out = self.model_inputs(feeds, i, signature)
        for arg, _, dtype in self.signatures[signature].values():
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
        rows = []
        for i in range(len(next(iter(feeds.values())))):
            signature = self.signature_for(feeds, i)
            rows.append(self.runners[signature](**self._sample(feeds, i, signature)))
        return {name: np.concatenate([self._output(r, k) for r in rows]).astype(np.dtype(t.dtype))
                for k, (name, t) in enumerate(zip(names, self.spec.outputs))}


def _length(inputs: Inputs) -> int:
    """A signature's sequence length (text) or pixel count (images): its first input's size."""
    return int(np.prod(next(iter(inputs.values()))[1]))
