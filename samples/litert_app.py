"""Classify with an edgesdk TFLite bundle using only ai-edge-litert, numpy and tokenizers.

The model has fixed input shapes (manifest ``build.fixed_inputs``): text is padded to them,
images are resized to them with the same bilinear resize as the PyTorch graph.

    python samples/litert_app.py dist/tflite-int8 "what a great film"
"""

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from bundle_io import Rows, SampleBundle, bilinear_resize, main


def _fixed(bundle: SampleBundle, name: str, value: np.ndarray, shape: list[int]) -> np.ndarray:
    if bundle.spec["kind"] == "image":
        return bilinear_resize(value, shape[1:3])[None]
    fill = bundle.spec["preprocessing"]["pad_id"] if name == "input_ids" else 0
    value = value[: shape[1]]
    return np.pad(value, (0, shape[1] - len(value)), constant_values=fill)[None].astype(np.int32)


def run(bundle: SampleBundle, rows: Rows) -> np.ndarray:
    runner = Interpreter(model_path=str(bundle.model)).get_signature_runner()
    shapes = bundle.manifest["build"]["fixed_inputs"]
    logits = []
    for row in rows:  # the graph's inputs are args_0, args_1, ... in the manifest's order
        feeds = {f"args_{k}": _fixed(bundle, n, row[n], shapes[n]) for k, n in enumerate(bundle.inputs)}
        logits.append(runner(**feeds)["output_0"])
    return np.concatenate(logits)


if __name__ == "__main__":
    main(run, "LiteRT")
