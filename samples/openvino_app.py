"""Classify with an edgesdk OpenVINO bundle using only openvino, numpy and tokenizers.

    python samples/openvino_app.py dist/openvino-int8 "what a great film"
"""

import numpy as np
import openvino as ov
from bundle_io import Rows, SampleBundle, main


def run(bundle: SampleBundle, rows: Rows) -> np.ndarray:
    compiled = ov.Core().compile_model(str(bundle.model), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    logits = compiled.output("logits")
    return np.concatenate([compiled({n: row[n][None] for n in bundle.inputs})[logits] for row in rows])


if __name__ == "__main__":
    main(run, "OpenVINO")
