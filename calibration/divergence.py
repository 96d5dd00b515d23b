"""Where an int8 model parts from the float one, layer by layer (onnxruntime exposes both).

Both ONNX models keep the float graph's tensor names, so each MatMul/Gemm/Conv output is
compared by name over a few samples, in graph order: cosine similarity and signal-to-noise
ratio (dB). The first layer whose SNR falls below a floor is where to look; if that layer
is int8, keeping it in float is the fallback to try.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .qdq import QUANT_OPS, layer_name

__all__ = ["layer_divergence", "SNR_FLOOR_DB"]

SNR_FLOOR_DB = 20.0


def _outputs(path: Path, names: list[str], rows: list, encoder, workdir: Path) -> dict[str, np.ndarray]:
    from .calibrate import ort_session, with_outputs

    session = ort_session(with_outputs(path, names, workdir / f"divergence-{path.stem}.onnx"))
    parts: dict[str, list] = {n: [] for n in names}
    for _, feeds in encoder.batches(rows, 1):  # one sample at a time: no padded positions
        for name, value in zip(names, session.run(names, feeds)):
            parts[name].append(value.ravel())
    return {n: np.concatenate(v).astype(np.float64) for n, v in parts.items()}


def layer_divergence(fp32: Path, int8: Path, rows: list, encoder, workdir: Path,
                     int8_layers: set[str]) -> dict[str, Any]:
    """Per layer output shared by both models: cosine and SNR of int8 against float."""
    import onnx

    float_model = onnx.load(str(fp32), load_external_data=False)
    produced = {o for n in onnx.load(str(int8), load_external_data=False).graph.node for o in n.output}
    layers = [(n, n.output[0]) for n in float_model.graph.node if n.op_type in QUANT_OPS and n.output[0] in produced]
    names = [tensor for _, tensor in layers]
    reference = _outputs(fp32, names, rows, encoder, workdir)
    candidate = _outputs(int8, names, rows, encoder, workdir)
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
