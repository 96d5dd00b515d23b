"""Classify with an edgesdk ONNX bundle using only onnxruntime, numpy and tokenizers (a string-in
text bundle needs onnxruntime-extensions instead of tokenizers).

    python samples/onnxruntime_app.py dist/onnx-fp32 "what a great film" "dull and too long"
"""

import numpy as np
import onnxruntime as ort
from bundle_io import Rows, SampleBundle, main


def run(bundle: SampleBundle, rows: Rows) -> np.ndarray:
    options = ort.SessionOptions()
    if bundle.spec["preprocessing"].get("text_input") == "string":  # the tokenizer runs inside the graph
        from onnxruntime_extensions import get_library_path

        options.register_custom_ops_library(get_library_path())
    session = ort.InferenceSession(str(bundle.model), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["logits"], {n: row[n][None] for n in bundle.inputs})[0] for row in rows])


if __name__ == "__main__":
    main(run, "onnxruntime")
