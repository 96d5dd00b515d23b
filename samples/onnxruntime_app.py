"""Classify with an edgesdk ONNX bundle using only onnxruntime, numpy and tokenizers.

    python samples/onnxruntime_app.py dist/onnx-fp32 "what a great film" "dull and too long"
"""

import numpy as np
import onnxruntime as ort
from bundle_io import Rows, SampleBundle, main


def run(bundle: SampleBundle, rows: Rows) -> np.ndarray:
    session = ort.InferenceSession(str(bundle.model), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["logits"], {n: row[n][None] for n in bundle.inputs})[0] for row in rows])


if __name__ == "__main__":
    main(run, "onnxruntime")
