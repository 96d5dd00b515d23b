"""Where an int8 model parts from the float one, layer by layer (onnxruntime exposes both).

Both ONNX models keep the float graph's tensor names, so each MatMul/Gemm/Conv output is
compared by name over a few samples, in graph order: cosine similarity and signal-to-noise
ratio (dB). The first layer whose SNR falls below a floor is where to look; if that layer
is int8, keeping it in float is the fallback to try.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .onnx_run import run_outputs
from .qdq import QUANT_OPS, layer_name

__all__ = ["layer_divergence", "SNR_FLOOR_DB"]

SNR_FLOOR_DB = 20.0


def _outputs(model: Any, names: list[str], rows: list, encoder) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {n: [] for n in names}
    for _, outputs in run_outputs(model, names, rows, encoder, batch_size=1):  # no padded positions
        for name in names:
            parts[name].append(outputs[name].ravel())
    return {n: np.concatenate(v).astype(np.float64) for n, v in parts.items()}


def layer_divergence(fp32: Any, int8: Any, rows: list, encoder, int8_layers: set[str]) -> dict[str, Any]:
    """Per layer output shared by both models (ModelProtos): cosine and SNR of int8 against float."""
    produced = {o for n in int8.graph.node for o in n.output}
    layers = [(n, n.output[0]) for n in fp32.graph.node if n.op_type in QUANT_OPS and n.output[0] in produced]
    names = [tensor for _, tensor in layers]
    reference = _outputs(fp32, names, rows, encoder)
    candidate = _outputs(int8, names, rows, encoder)
    table = []
    for node, tensor in layers:
        a, b = reference[tensor], candidate[tensor]
        noise = float(np.sum((a - b) ** 2))
        table.append({
            "layer": layer_name(node),
            "int8": node.name in int8_layers,
            "cosine": float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30)),
            "snr_db": float(10 * np.log10(np.sum(a**2) / noise)) if noise > 0 else float("inf"),
        })
    first = next((row for row in table if row["snr_db"] < SNR_FLOOR_DB), None)
    return {"samples": len(rows), "snr_floor_db": SNR_FLOOR_DB, "layers": table,
            "first_below_floor": first["layer"] if first else None,
            "suggested_fallback": first["layer"] if first and first["int8"] else None}
