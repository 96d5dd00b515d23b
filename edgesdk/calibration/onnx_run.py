"""Run in-memory ONNX models in onnxruntime: sessions, extra outputs, logits over encoded rows.

The float model is loaded once per calibration and passed around as an ``onnx.ModelProto``;
every trial is a rewritten copy serialized straight into a session, never re-read from disk.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from edgesdk.runtime.runners.onnx_runner import ort_session

__all__ = ["with_outputs", "onnx_logits", "run_outputs"]

THREADS = 2


def _session(model: Any):
    """An onnxruntime CPU session of ``model`` (a ModelProto or serialized bytes) on ``THREADS``."""
    return ort_session(model if isinstance(model, bytes) else model.SerializeToString(), threads=THREADS)


def with_outputs(model: Any, names: Iterable[str]) -> Any:
    """A copy of ``model`` that also returns the float tensors ``names``."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    out.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                            for n in names if n not in present)
    return out


def run_outputs(model: Any, names: list[str], rows: list, encoder, batch_size: int = 16):
    """Yield (feeds, {name: value}) per batch of ``rows`` for the named outputs of ``model``."""
    session = _session(with_outputs(model, names))
    for _, feeds in encoder.batches(rows, batch_size):
        yield feeds, dict(zip(names, session.run(names, feeds)))


def onnx_logits(model: Any, rows: list, encoder) -> np.ndarray:
    """The ``logits`` output of ``model`` over encoded ``rows``, in row order."""
    from edgesdk.runtime.encode import in_row_order

    session = _session(model)
    return in_row_order((idx, session.run(["logits"], feeds)[0]) for idx, feeds in encoder.batches(rows, 16)
                        ).astype(np.float64)
