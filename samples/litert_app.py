"""Classify with an edgesdk TFLite bundle using only ai-edge-litert, numpy and tokenizers.

The model has one signature per fixed input shape (manifest ``build.signatures``): a text
runs in the one with the shortest sequence that holds its tokens, padded to it; an image is
resized to the model's size with the same bilinear resize as the PyTorch graph. A
full-integer model's int8 inputs and outputs are quantized with the scales it carries.

    python samples/litert_app.py dist/tflite-int8 "what a great film"
"""

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from bundle_io import Rows, SampleBundle, bilinear_resize, main


def _signature(bundle: SampleBundle, row: dict, signatures: dict) -> str:
    """The shortest signature that holds the row's tokens (the only one for images)."""
    if bundle.spec["kind"] == "image":
        return next(iter(signatures))
    tokens = int(row["attention_mask"].sum()) if "attention_mask" in row else len(row["input_ids"])
    by_length = sorted(signatures, key=lambda name: signatures[name]["input_ids"][1])
    return next((name for name in by_length if signatures[name]["input_ids"][1] >= tokens), by_length[-1])


def _fixed(bundle: SampleBundle, name: str, value: np.ndarray, shape: list[int]) -> np.ndarray:
    if bundle.spec["kind"] == "image":
        return bilinear_resize(value, shape[1:3])[None]
    fill = bundle.spec["preprocessing"]["pad_id"] if name == "input_ids" else 0
    value = value[: shape[1]]
    return np.pad(value, (0, shape[1] - len(value)), constant_values=fill)[None]


def _argument(value: np.ndarray, detail: dict) -> np.ndarray:
    """``value`` as the model takes it: quantized where the input is int8, else cast."""
    scale, zero = detail["quantization"]
    if scale:
        bounds = np.iinfo(detail["dtype"])
        value = np.clip(np.round(value / scale) + zero, bounds.min, bounds.max)
    return value.astype(detail["dtype"])


def run(bundle: SampleBundle, rows: Rows) -> np.ndarray:
    interpreter = Interpreter(model_path=str(bundle.model), num_threads=2)
    signatures = bundle.manifest["build"]["signatures"]
    runners = {name: interpreter.get_signature_runner(name) for name in signatures}
    logits = []
    for row in rows:  # the graph's inputs are args_0, args_1, ... in the manifest's order
        name = _signature(bundle, row, signatures)
        details = runners[name].get_input_details()
        feeds = {f"args_{k}": _argument(_fixed(bundle, n, row[n], signatures[name][n]), details[f"args_{k}"])
                 for k, n in enumerate(bundle.inputs)}
        value = runners[name](**feeds)["output_0"]
        scale, zero = runners[name].get_output_details()["output_0"]["quantization"]
        logits.append((value.astype(np.float32) - zero) * scale if scale else value)
    return np.concatenate(logits)


if __name__ == "__main__":
    main(run, "LiteRT")
